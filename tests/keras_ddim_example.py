"""The Keras DDIM example's network and `DiffusionModel` (keras-io examples/generative/ddim.py, Keras 3), as the
example writes them, on whatever backend KERAS_BACKEND names (the tests use torch). Importable as
`keras_ddim_example`. Only the parts that decide the weights file and `generate()` are kept (no KID), and
its `train_step` uses PyTorch's autograd where the example uses TensorFlow's GradientTape."""

from __future__ import annotations

import math
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported: its backend is fixed then

import keras
from keras import layers, ops

embedding_dims = 32
embedding_max_frequency = 1000.0
min_signal_rate = 0.02
max_signal_rate = 0.95
ema = 0.999


@keras.saving.register_keras_serializable()
def sinusoidal_embedding(x):
    embedding_min_frequency = 1.0
    frequencies = ops.exp(
        ops.linspace(ops.log(embedding_min_frequency), ops.log(embedding_max_frequency), embedding_dims // 2)
    )
    angular_speeds = ops.cast(2.0 * math.pi * frequencies, "float32")
    return ops.concatenate([ops.sin(angular_speeds * x), ops.cos(angular_speeds * x)], axis=3)


def ResidualBlock(width):
    def apply(x):
        input_width = x.shape[3]
        residual = x if input_width == width else layers.Conv2D(width, kernel_size=1)(x)
        x = layers.BatchNormalization(center=False, scale=False)(x)
        x = layers.Conv2D(width, kernel_size=3, padding="same", activation="swish")(x)
        x = layers.Conv2D(width, kernel_size=3, padding="same")(x)
        return layers.Add()([x, residual])

    return apply


def DownBlock(width, block_depth):
    def apply(x):
        x, skips = x
        for _ in range(block_depth):
            x = ResidualBlock(width)(x)
            skips.append(x)
        return layers.AveragePooling2D(pool_size=2)(x)

    return apply


def UpBlock(width, block_depth):
    def apply(x):
        x, skips = x
        x = layers.UpSampling2D(size=2, interpolation="bilinear")(x)
        for _ in range(block_depth):
            x = layers.Concatenate()([x, skips.pop()])
            x = ResidualBlock(width)(x)
        return x

    return apply


def get_network(image_size, widths, block_depth):
    noisy_images = keras.Input(shape=(image_size, image_size, 3))
    noise_variances = keras.Input(shape=(1, 1, 1))
    e = layers.Lambda(sinusoidal_embedding, output_shape=(1, 1, 32))(noise_variances)
    e = layers.UpSampling2D(size=image_size, interpolation="nearest")(e)
    x = layers.Conv2D(widths[0], kernel_size=1)(noisy_images)
    x = layers.Concatenate()([x, e])
    skips = []
    for width in widths[:-1]:
        x = DownBlock(width, block_depth)([x, skips])
    for _ in range(block_depth):
        x = ResidualBlock(widths[-1])(x)
    for width in reversed(widths[:-1]):
        x = UpBlock(width, block_depth)([x, skips])
    x = layers.Conv2D(3, kernel_size=1, kernel_initializer="zeros")(x)
    return keras.Model([noisy_images, noise_variances], x, name="residual_unet")


@keras.saving.register_keras_serializable()
class DiffusionModel(keras.Model):
    def __init__(self, image_size, widths, block_depth):
        super().__init__()
        self.image_size = image_size
        self.normalizer = layers.Normalization()
        self.network = get_network(image_size, widths, block_depth)
        self.ema_network = keras.models.clone_model(self.network)

    def denormalize(self, images):
        images = self.normalizer.mean + images * self.normalizer.variance**0.5
        return ops.clip(images, 0.0, 1.0)

    def diffusion_schedule(self, diffusion_times):
        start_angle = ops.cast(ops.arccos(max_signal_rate), "float32")
        end_angle = ops.cast(ops.arccos(min_signal_rate), "float32")
        diffusion_angles = start_angle + diffusion_times * (end_angle - start_angle)
        return ops.sin(diffusion_angles), ops.cos(diffusion_angles)

    def denoise(self, noisy_images, noise_rates, signal_rates, training):
        network = self.network if training else self.ema_network
        pred_noises = network([noisy_images, noise_rates**2], training=training)
        pred_images = (noisy_images - noise_rates * pred_noises) / signal_rates
        return pred_noises, pred_images

    def reverse_diffusion(self, initial_noise, diffusion_steps):
        num_images = initial_noise.shape[0]
        step_size = 1.0 / diffusion_steps
        next_noisy_images = initial_noise
        for step in range(diffusion_steps):
            noisy_images = next_noisy_images
            diffusion_times = ops.ones((num_images, 1, 1, 1)) - step * step_size
            noise_rates, signal_rates = self.diffusion_schedule(diffusion_times)
            pred_noises, pred_images = self.denoise(noisy_images, noise_rates, signal_rates, training=False)
            next_diffusion_times = diffusion_times - step_size
            next_noise_rates, next_signal_rates = self.diffusion_schedule(next_diffusion_times)
            next_noisy_images = next_signal_rates * pred_images + next_noise_rates * pred_noises
        return pred_images

    def train_step(self, images):
        """The example's train_step, with PyTorch's autograd in place of tf.GradientTape (Keras' torch recipe)."""
        import torch

        images = self.normalizer(images, training=True)
        shape = ops.shape(images)
        noises = keras.random.normal(shape=shape)
        diffusion_times = keras.random.uniform(minval=0.0, maxval=1.0, shape=(shape[0], 1, 1, 1))
        noise_rates, signal_rates = self.diffusion_schedule(diffusion_times)
        noisy_images = signal_rates * images + noise_rates * noises
        self.zero_grad()
        pred_noises, _ = self.denoise(noisy_images, noise_rates, signal_rates, training=True)
        noise_loss = ops.mean(keras.losses.mean_absolute_error(noises, pred_noises))  # the example: MAE
        noise_loss.backward()
        weights = self.network.trainable_weights
        with torch.no_grad():
            self.optimizer.apply([w.value.grad for w in weights], weights)
        for weight, ema_weight in zip(self.network.weights, self.ema_network.weights, strict=True):
            ema_weight.assign(ema * ema_weight + (1 - ema) * weight)
        return {"n_loss": noise_loss}

    def generate_from(self, initial_noise, diffusion_steps):
        """The example's `generate()`, from the given initial noise (NHWC) instead of a fresh draw."""
        return self.denormalize(self.reverse_diffusion(initial_noise, diffusion_steps))


def trained_checkpoint(path, image_size: int = 16, widths=(8, 16, 24), block_depth: int = 2, epochs: int = 50, seed=0):
    """Build the example's DiffusionModel, fit it briefly on smooth synthetic images (its own loop, `fit`),
    copy the network into the EMA (a few steps leave the EMA's zero-initialised head near 0), and
    `save_weights` it to `path`. Returns the model."""
    import numpy as np

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.2, 1.0, image_size, dtype=np.float32)[None, :, None, None]
    data = (rng.random((64, image_size, image_size, 3), dtype=np.float32) * ramp).astype("float32")
    model = DiffusionModel(image_size, list(widths), block_depth)
    model.normalizer.adapt(data)
    probe = [data[:2], np.ones((2, 1, 1, 1), "float32")]
    model.network(probe)
    model.ema_network(probe)
    model.built = True
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-4))
    model.fit(data, epochs=epochs, batch_size=16, verbose=0)
    for ema_weight, weight in zip(model.ema_network.weights, model.network.weights, strict=True):
        ema_weight.assign(weight.value)
    model.save_weights(str(path))
    return model
