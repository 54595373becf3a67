"""The shared core: what every other package may import, and which imports none of them.

No TensorFlow, no database, no HTTP framework: settings, the exception tree, limits and file
formats, image decoding, attention pictures, dataset archives, webhook signatures, and the
queues' names and Celery configuration.
"""
