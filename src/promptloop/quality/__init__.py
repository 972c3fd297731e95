"""Quality services shared by the stages: detectors, PII redaction, judge prompts and verdicts."""
