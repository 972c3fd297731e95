"""The domain: prompt versions, golden cases, the log record, the knowledge base, the app under test."""
