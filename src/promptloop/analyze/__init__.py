"""Stage analyze: monitoring metrics, alerts, failure mining and clustering over collected logs."""
