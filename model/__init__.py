"""The captioning model: TensorFlow/Keras, knowing nothing of HTTP, Celery or databases.

Public entry points, by module (nothing is re-exported here, so that `model.images` and
`model.vocab` stay importable without loading TensorFlow):

- `model.encoder.Encoder`        InceptionV3 features (B, 64, 2048) and the weights fingerprint
- `model.bundle.load_bundle`     a trained decoder, vocabulary and normalisation from a directory
- `model.inference.Captioner`    `caption_batch(images) -> [CaptionResult]`, greedy or beam
- `model.images.decode_image`    image bytes to encoder input (decoded by `core.images`)
- `model.training.train`         a bundle from a COCO-format dataset
- `model.evaluation.score`       BLEU-1…4, CIDEr-D, exact match, attention localisation
- `model.shapes.write_shapes_dataset`  a synthetic COCO-format set
"""
