"""Stage deploy: a promoted candidate as a pull request; release after a person merged it."""
