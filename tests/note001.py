"""Note 001's MNIST CNN and its hand-written GradientTape loop, rewritten as a Keras `train_step` so that
`imgtrain.train(model=note001)` runs it (docs/seeds.md, seed 001). Imported by tests/test_custom.py, and run as a
script by its resume test: python tests/note001.py OUT EPOCHS."""

import sys

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="note001")
class Note001(keras.Model):
    """The note's loop body: the loss under a GradientTape, its gradients applied, the metrics updated; plus the
    gradients' global norm, which the note could not see and imgtrain's history.csv shows per epoch."""

    def train_step(self, data):
        images, labels, weights = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            probs = self(images, training=True)
            loss = self.compute_loss(x=images, y=labels, y_pred=probs, sample_weight=weights)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(labels, probs, sample_weight=weights)
        return {**{m.name: m.result() for m in self.metrics}, "grad_norm": tf.linalg.global_norm(grads)}


def note001(input_shape, num_classes):
    """The note's network: conv 32/64/128 ('same', ReLU) each with 2x2 max-pooling, dense 256, dropout 0.4, and a
    softmax head (the note kept logits for its loss; imgtrain's loss and report take probabilities)."""
    layers = keras.layers
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1 / 255)(inputs)  # the note divided by 255 before the data pipeline; the model does it here
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, activation="relu", padding="same")(x)
        x = layers.MaxPool2D(padding="same")(x)
    x = layers.Dropout(0.4)(layers.Dense(256, activation="relu")(layers.Flatten()(x)))
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return Note001(inputs, outputs, name="note001")


RECIPE = dict(
    dataset="mnist",
    label_mode="onehot",
    batch_size=100,
    learning_rate=1e-3,
    schedule="constant",
    train_limit=6000,
    tensorboard=False,
    verbose="quiet",
)  # the note's: one-hot labels, batch 100, Adam 1e-3

if __name__ == "__main__":
    from imgtrain import train

    train(model=note001, **{**RECIPE, "train_limit": 2000, "report": False}, epochs=int(sys.argv[2]), out=sys.argv[1])
