"""Persistence: the database, the job tables and the blob store (the only boto3 user)."""
