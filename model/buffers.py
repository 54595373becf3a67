"""Fixed-shape buffers for loops that compile with XLA: one slot per step, set with `tf.where`."""

from __future__ import annotations

import tensorflow as tf


def write_column(buffer: tf.Tensor, t, column: tf.Tensor, time_axis: int) -> tf.Tensor:
    """`buffer` with index t of `time_axis` set to `column` (buffer's shape without that axis)."""
    length = buffer.shape[time_axis]
    at_t = tf.reshape(tf.range(length) == t, [length] + [1] * (buffer.shape.rank - time_axis - 1))
    return tf.where(at_t, tf.expand_dims(column, time_axis), buffer)
