"""Persistence: the only door to the database (SQLAlchemy) and the blob store (boto3).

The tables and their guarded lifecycle updates, the webhook outbox, the registry, every blob
key (`store.blob_keys`) and the JSON shapes built from the rows (`store.payloads`).
"""
