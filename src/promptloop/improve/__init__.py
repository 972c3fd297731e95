"""Stage improve: a bigger golden set, prompt candidates, their evaluation and the best promotable one."""
