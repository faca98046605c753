"""The classifier and the autoencoder, sized from a dataset description; each owns `save` and `load`.

Both models take float images in [0, 1] of shape [N, C, H, W] in `forward`; uint8 batches (the format at every
edge of Scanflow) go through `predict`/`embed`, which convert and batch them. The classifier normalises its input
with the per-channel mean and standard deviation of its training data, stored as buffers so a saved model carries
them.

Every model is built for its images' size: 1 (grey) or 3 (RGB) channels and any height and width from
`MIN_IMAGE_SIDE` to `MAX_IMAGE_SIDE` pixels (28x28 grey, 32x32, 64x64 and 96x96 RGB are tested). The classifier
and the autoencoder halve the image twice (to ceil(H / 4) x ceil(W / 4) in the autoencoder, floor in the
classifier) and connect that feature map to a dense layer, which therefore grows with the area; the autoencoder's
decoder doubles twice and crops to the image. Larger images are brought to at most `MAX_IMAGE_SIDE` by an image
contract (`scanflow.images.model_contract`: a resize that keeps the aspect ratio, or a centre crop).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from scanflow.errors import ScanflowError, UnsupportedImageSizeError

FORMAT_VERSION = 1
#: The label a filter answers for an image it rejects (`scanflow.improve.filter.FilteredClassifier`); never a class.
REJECTED_LABEL = -1
#: Images per forward pass at inference for models with full-resolution feature maps (the classifier, the
#: denoiser). Small chunks keep every activation inside glibc's heap, where larger ones become fresh mmaps whose
#: page faults cost more than the convolutions (docs/decisions/0005-inference-speed.md).
INFERENCE_CHUNK = 128
#: The image area (pixels) the inference chunks are given for; for larger images a chunk holds proportionally fewer
#: images (`SavableModel.inference_chunk`), so its feature maps take no more memory than at 28x28.
CHUNK_REFERENCE_AREA = 28 * 28
#: Fewest images per inference chunk, whatever the image size.
MIN_INFERENCE_CHUNK = 8
#: Smallest image side (pixels) a model is built for: two halvings leave at least a 2x2 feature map.
MIN_IMAGE_SIDE = 8
#: Largest image side (pixels) a model is built for. The dense layer after the feature map grows with the image's
#: area: at 96x96 RGB the classifier has 4.7 M weights (0.42 M at 28x28), the autoencoder 1.2 M (0.12 M), and a
#: 224x224 classifier would have 26 M. Larger images go through `scanflow.images.model_contract` first.
MAX_IMAGE_SIDE = 96
#: Channels of the autoencoder's first layer. 16 rather than the classifier's 32: the detector runs the autoencoder on
#: every production batch, and at 32 its pass cost about as much as the classifier's (predict + detect near 1.9 x
#: predict alone, over the 1.5 x target). At 16, trained twice as long (`scanflow.train.AUTOENCODER_EPOCH_FACTOR`),
#: detection and sample AUROC are as good or better on MNIST and Fashion-MNIST (docs/decisions/0005).
AUTOENCODER_WIDTH = 16
_ModelT = TypeVar("_ModelT", bound="SavableModel")


@dataclass(frozen=True)
class ImageSpec:
    """What a model is built for: image shape and number of classes."""

    channels: int
    height: int
    width: int
    n_classes: int

    @classmethod
    def from_info(cls, info: Any) -> "ImageSpec":
        """Build from a `scanflow.data.DatasetInfo` (or anything with the same attributes)."""
        return cls(int(info.channels), int(info.height), int(info.width), int(info.n_classes))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 to float32 in [0, 1]; float input is passed through as float32."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


class SavableModel(nn.Module):
    """A module rebuilt from a small JSON-able config; `save` writes config + weights, `load` reverses it."""

    kind: ClassVar[str]
    #: Images per forward pass in the batched inference helpers (`predict_proba`, `embed`, `clean`, ...) at 28x28
    #: (`CHUNK_REFERENCE_AREA`); `inference_chunk` scales it to the model's image size.
    base_inference_chunk: ClassVar[int] = INFERENCE_CHUNK

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels of the images the model is built for."""
        return self.height, self.width

    @property
    def inference_chunk(self) -> int:
        """Images per forward pass at inference: `base_inference_chunk` up to 28x28, proportionally fewer for larger
        images (at least `MIN_INFERENCE_CHUNK`), so a chunk's activations stay the size the base was chosen for."""
        height, width = self.image_size()
        scaled = self.base_inference_chunk * CHUNK_REFERENCE_AREA // (height * width)
        return max(MIN_INFERENCE_CHUNK, min(self.base_inference_chunk, scaled))

    def _inference_input(self, chunk: torch.Tensor) -> torch.Tensor:
        """`chunk` as float in [0, 1] in channels-last layout, the weights switched to that layout on first use:
        oneDNN's CPU convolutions run faster in it, with outputs equal within 1e-5 (docs/decisions/0005)."""
        if not getattr(self, "_channels_last", False):
            self.to(memory_format=torch.channels_last)
            self._channels_last = True
        return to_float(chunk).contiguous(memory_format=torch.channels_last)

    def save(self, path: str | Path) -> Path:
        """Write the model to `path` (a torch file holding only tensors and primitives)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "config": self.config(),
            "state_dict": self.state_dict(),
        }
        torch.save(payload, path)
        return path

    @classmethod
    def load(cls: type[_ModelT], path: str | Path) -> _ModelT:
        """Rebuild a model saved by `save`; refuses a file holding another kind of model."""
        path = Path(path)
        if not path.is_file():
            raise ScanflowError(f"no saved model at {path}: check the path or train a model with `scanflow train`")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("kind") != cls.kind:
            found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
            raise ScanflowError(f"{path} holds a {found!r}, not a {cls.kind!r}: load it with the matching class")
        if payload.get("format_version") != FORMAT_VERSION:
            raise ScanflowError(
                f"{path} was saved in format {payload.get('format_version')}, this Scanflow reads {FORMAT_VERSION}"
            )
        model = cls(**payload["config"])
        model.load_state_dict(payload["state_dict"])
        model.eval()
        return model


def check_image_size(channels: int, height: int, width: int) -> None:
    """Refuse an image shape no model is built for.

    Raises:
        UnsupportedImageSizeError: channels other than 1 or 3, or a side outside `MIN_IMAGE_SIDE`..`MAX_IMAGE_SIDE`;
            the message names the fix (`scanflow.images.model_contract` for larger images).
    """
    if channels not in (1, 3):
        raise UnsupportedImageSizeError(f"models take 1 (grey) or 3 (RGB) channels, got {channels}: convert the images to grey or RGB")
    if min(height, width) < MIN_IMAGE_SIDE:
        raise UnsupportedImageSizeError(
            f"images of {height}x{width} pixels are too small for a model (at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}): "
            "upscale them, e.g. with scanflow.images.read_images and an ImageContract of at least that size"
        )
    if max(height, width) > MAX_IMAGE_SIDE:
        raise UnsupportedImageSizeError(
            f"images of {height}x{width} pixels are larger than models are built for (at most {MAX_IMAGE_SIDE} "
            f"pixels a side): fit them with scanflow.images.model_contract({channels}, {height}, {width}, "
            "fit='resize' or 'center-crop') and read them through that contract"
        )


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


#: Layers of `Classifier.head` up to the hidden activations (flatten, dropout, linear, ReLU); the rest maps them to logits.
_EMBEDDING_LAYERS = 4


class Classifier(SavableModel):
    """A small CNN: two conv-batchnorm stages with max-pooling, then a two-layer head. Works for 1 or 3 channels and
    sides of `MIN_IMAGE_SIDE` to `MAX_IMAGE_SIDE` pixels."""

    kind = "scanflow-classifier"

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        n_classes: int,
        width_multiplier: int = 32,
        hidden: int = 128,
        dropout: float = 0.3,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        check_image_size(channels, height, width)
        self.spec = ImageSpec(channels, height, width, n_classes)
        self._hparams = {"width_multiplier": width_multiplier, "hidden": hidden, "dropout": dropout}
        c1, c2 = width_multiplier, 2 * width_multiplier
        self.features = nn.Sequential(
            _conv_block(channels, c1),
            nn.MaxPool2d(2),
            _conv_block(c1, c2),
            nn.MaxPool2d(2),
        )
        flat = c2 * (height // 4) * (width // 4)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(flat, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.5] * channels).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std if std is not None else [0.5] * channels).view(1, -1, 1, 1))

    def image_size(self) -> tuple[int, int]:
        return self.spec.height, self.spec.width

    def config(self) -> dict[str, Any]:
        return {
            **asdict(self.spec),
            **self._hparams,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
        }

    def set_normalization(self, images: torch.Tensor) -> None:
        """Store the per-channel mean/std of `images` (uint8 or [0, 1] float, [N, C, H, W]) for input scaling."""
        x = to_float(images)
        self.mean.copy_(x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1))
        self.std.copy_(x.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, n_classes] for float images in [0, 1]."""
        return self.head[_EMBEDDING_LAYERS:](self._embedding(x))

    def _embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[:_EMBEDDING_LAYERS](self.features((x - self.mean) / self.std))

    @torch.no_grad()
    def embed_and_predict_proba(self, images: torch.Tensor, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden layer's activations [N, hidden] and the class probabilities [N, n_classes] (both float32) of a
        uint8 or float batch, from one pass in eval mode.

        The activations are the classifier's own view of an image: organised by what it takes the content to be,
        not by pixel appearance as the autoencoder's latent space is, which is what choosing typical samples for a
        person to label needs (`scanflow.drift.selection.select_typical`)."""
        if len(images) == 0:
            return torch.empty(0, self._hparams["hidden"]), torch.empty(0, self.spec.n_classes)
        was_training = self.training
        self.eval()
        try:
            embedding = torch.cat([self._embedding(self._inference_input(chunk)) for chunk in images.split(batch_size or self.inference_chunk)])
            return embedding, F.softmax(self.head[_EMBEDDING_LAYERS:](embedding), dim=1)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Class probabilities [N, n_classes] (float32) for a uint8 or float batch, in eval mode."""
        return self.embed_and_predict_proba(images, batch_size)[1]

    def predict(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Predicted labels, int64 [N]."""
        return self.predict_proba(images, batch_size).argmax(dim=1)


#: Kernel rows of a kernel-4, stride-2, padding-1 transposed convolution that reach output phase a (0: even rows,
#: 1: odd rows) from the input row at offset -1, 0 or +1.
_SUBPIXEL_TAPS = {0: {-1: 3, 0: 1}, 1: {0: 2, 1: 0}}


def _subpixel_weights(conv: nn.ConvTranspose2d, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The 3x3 kernel [4 * out, in, 3, 3] and bias of the sub-pixel convolution that computes `conv`, a kernel-4,
    stride-2, padding-1 transposed convolution: one 3x3 convolution into four times the channels (one per output
    phase) and a pixel shuffle make the same sums, in a layout oneDNN runs fast. PyTorch's CPU transposed
    convolution is slow with few output channels (docs/decisions/0005-inference-speed.md)."""
    weight = conv.weight
    channels_in, channels_out = weight.shape[:2]
    kernel = weight.new_zeros(channels_out, 2, 2, channels_in, 3, 3)
    for a, rows in _SUBPIXEL_TAPS.items():
        for b, cols in _SUBPIXEL_TAPS.items():
            for dy, ky in rows.items():
                for dx, kx in cols.items():
                    kernel[:, a, b, :, dy + 1, dx + 1] = weight[:, :, ky, kx].t()
    bias = conv.bias.repeat_interleave(4).to(dtype) if conv.bias is not None else None
    return kernel.reshape(4 * channels_out, channels_in, 3, 3).to(dtype), bias


def _subpixel_on_phases(kernel: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A sub-pixel convolution (`_subpixel_weights`: kernel [4 * out, in, 3, 3]) re-expressed to read its input
    before that input's own pixel shuffle: from the four phase maps [4 * in, h, w] of the previous sub-pixel
    convolution to the 16 phases [16 * out, h, w] of its own output, which one pixel shuffle by 4 lays out.
    The sums are the same (each tap of the 3x3 kernel moves to the phase and offset its input pixel sits at); the
    middle map is never shuffled and the convolution runs on the 4x smaller grid."""
    channels_out, channels_in = kernel.shape[0] // 4, kernel.shape[1]
    taps = kernel.view(channels_out, 2, 2, channels_in, 3, 3)
    composed = kernel.new_zeros(channels_out, 4, 4, channels_in, 2, 2, 3, 3)
    for row in range(4):
        middle_row, own_row = divmod(row, 2)
        for col in range(4):
            middle_col, own_col = divmod(col, 2)
            for dy in (-1, 0, 1):
                phase_row, shift_row = (middle_row + dy) % 2, (middle_row + dy) // 2
                for dx in (-1, 0, 1):
                    phase_col, shift_col = (middle_col + dx) % 2, (middle_col + dx) // 2
                    composed[:, row, col, :, phase_row, phase_col, shift_row + 1, shift_col + 1] = taps[:, own_row, own_col, :, dy + 1, dx + 1]
    composed_bias = None if bias is None else bias.view(channels_out, 2, 2).repeat(1, 2, 2).flatten()
    return composed.reshape(16 * channels_out, 4 * channels_in, 3, 3), composed_bias


@dataclass(frozen=True)
class _InferenceDecoder:
    """The decoder's weights laid out for inference (`Autoencoder._inference_decoder`): the linear layer's rows
    permuted so its output is the grid in channels-last order (float32), the first transposed convolution as a
    sub-pixel kernel and the second composed onto its phases (`_subpixel_on_phases`), both channels-last in the
    decoder's precision."""

    grid_weight: torch.Tensor
    grid_bias: torch.Tensor
    first_kernel: torch.Tensor
    first_bias: torch.Tensor | None
    second_kernel: torch.Tensor
    second_bias: torch.Tensor | None


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): there a bfloat16 convolution takes about
    half the time of a float32 one; elsewhere it is emulated and slower than float32."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


class Autoencoder(SavableModel):
    """A convolutional autoencoder with an explicit latent vector: `encode` -> [N, latent_dim], `decode` -> images.

    Two stride-2 convolutions shrink H and W to ceil(H / 4) x ceil(W / 4), a linear layer maps to the latent vector;
    the decoder mirrors it (two transposed convolutions double the grid twice) and crops to the exact input size, so
    any size from `MIN_IMAGE_SIDE` to `MAX_IMAGE_SIDE` works, odd ones such as 30x30 or 9x13 too. `width_multiplier`
    is the first layer's channel count (the second has twice as many); see `AUTOENCODER_WIDTH` for the default.
    """

    kind = "scanflow-autoencoder"
    #: Its feature maps are a quarter of the input's area or less, so large chunks stay cheap.
    base_inference_chunk = 512

    def __init__(
        self, channels: int, height: int, width: int, latent_dim: int = 32, width_multiplier: int = AUTOENCODER_WIDTH
    ) -> None:
        super().__init__()
        check_image_size(channels, height, width)
        self.channels, self.height, self.width = channels, height, width
        self.latent_dim = latent_dim
        self.width_multiplier = width_multiplier
        c1, c2 = width_multiplier, 2 * width_multiplier
        self._h4, self._w4 = math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width / 2) / 2)
        flat = c2 * self._h4 * self._w4
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, c1, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(flat, latent_dim),
        )
        self.decoder_input = nn.Linear(latent_dim, flat)
        self.decoder = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c1, channels, 4, stride=2, padding=1),
        )

    def config(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "latent_dim": self.latent_dim,
            "width_multiplier": self.width_multiplier,
        }

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent vectors [N, latent_dim] for float images in [0, 1]."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], [N, C, H, W], from latent vectors."""
        if self.training:
            return self._crop_to_image(self.decoder(self._decoder_grid(z)))
        return self._decode_for_inference(z, self._inference_decoder(torch.float32))

    def _decoder_grid(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder_input(z).view(-1, 2 * self.width_multiplier, self._h4, self._w4)

    def _crop_to_image(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out[:, :, : self.height, : self.width].float())

    def _inference_decoder(self, dtype: torch.dtype) -> _InferenceDecoder:
        """`_InferenceDecoder` in `dtype`, built once per dtype and rebuilt when a decoder weight changes (an
        optimiser step, `load_state_dict`, a move to another layout: each bumps the tensor's version counter or
        replaces its storage). Building takes about a millisecond, a tenth of a 1,000-image pass."""
        parameters = [*self.decoder_input.parameters(), *self.decoder.parameters()]
        versions = tuple((p._version, p.data_ptr()) for p in parameters)
        cache = self.__dict__.setdefault("_inference_decoders", {})
        if dtype not in cache or cache[dtype][0] != versions:
            cache[dtype] = (versions, self._build_inference_decoder(dtype))
        return cache[dtype][1]

    @torch.no_grad()
    def _build_inference_decoder(self, dtype: torch.dtype) -> _InferenceDecoder:
        channels, h4, w4 = 2 * self.width_multiplier, self._h4, self._w4
        channels_last_rows = torch.arange(channels * h4 * w4).view(channels, h4, w4).permute(1, 2, 0).flatten()
        first, second = (layer for layer in self.decoder if isinstance(layer, nn.ConvTranspose2d))
        first_kernel, first_bias = _subpixel_weights(first, dtype)
        second_kernel, second_bias = _subpixel_on_phases(*_subpixel_weights(second, dtype))
        return _InferenceDecoder(
            self.decoder_input.weight[channels_last_rows],
            self.decoder_input.bias[channels_last_rows],
            first_kernel.contiguous(memory_format=torch.channels_last),
            first_bias,
            second_kernel.contiguous(memory_format=torch.channels_last),
            second_bias,
        )

    def _decode_for_inference(self, z: torch.Tensor, decoder: _InferenceDecoder) -> torch.Tensor:
        """`decode` through `decoder`: the linear layer and the sigmoid in float32, the convolutions channels-last in
        the precision of `decoder`'s kernels. Same sums as the training layers (`decoder`), in another order."""
        grid = F.relu(F.linear(z, decoder.grid_weight, decoder.grid_bias)).to(decoder.first_kernel.dtype)
        grid = grid.view(-1, self._h4, self._w4, 2 * self.width_multiplier).permute(0, 3, 1, 2)
        phases = F.relu_(F.conv2d(grid, decoder.first_kernel, decoder.first_bias, padding=1))
        return self._crop_to_image(F.pixel_shuffle(F.conv2d(phases, decoder.second_kernel, decoder.second_bias, padding=1), 4))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the inference weights, which are derived from the parameters."""
        state = super().__getstate__()
        state.pop("_inference_decoders", None)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Latent vectors [N, latent_dim] for a uint8 or float batch, in eval mode."""
        self.eval()
        chunks = [self.encode(self._inference_input(chunk)) for chunk in images.split(batch_size or self.inference_chunk)]
        return torch.cat(chunks) if chunks else torch.empty(0, self.latent_dim)

    @torch.no_grad()
    def embed_with_error(
        self, images: torch.Tensor, batch_size: int | None = None, decoder_dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent vectors [N, latent_dim] and reconstruction errors [N] from one encoder pass.

        `decoder_dtype=torch.bfloat16` runs the decoder's convolutions in bfloat16 (the encoder, hence the latent
        vectors, stays float32): faster on a CPU with native bfloat16 (`native_bfloat16`); the errors move by 0.2 %
        on average, at most about 1 % (docs/decisions/0005-inference-speed.md)."""
        latents, errors, _ = self._encode_and_compare(images, batch_size, decoder_dtype, error_maps=False)
        return latents, errors

    @torch.no_grad()
    def embed_with_error_maps(
        self, images: torch.Tensor, batch_size: int | None = None, decoder_dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`embed_with_error`, plus where the error sits: the squared error per position, summed over channels
        (pixels in [0, 1]), float [N, H, W]."""
        latents, errors, maps = self._encode_and_compare(images, batch_size, decoder_dtype, error_maps=True)
        return latents, errors, maps

    def _encode_and_compare(
        self, images: torch.Tensor, batch_size: int | None, decoder_dtype: torch.dtype, error_maps: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        self.eval()
        decoder = self._inference_decoder(decoder_dtype)
        latents, errors, maps = [], [], []
        for chunk in images.split(batch_size or self.inference_chunk):
            x = self._inference_input(chunk)
            z = self.encode(x)
            latents.append(z)
            squared = (self._decode_for_inference(z, decoder) - x) ** 2
            errors.append(squared.mean(dim=(1, 2, 3)))
            if error_maps:
                maps.append(squared.sum(dim=1))
        if not latents:
            return torch.empty(0, self.latent_dim), torch.empty(0), torch.empty(0, self.height, self.width) if error_maps else None
        return torch.cat(latents), torch.cat(errors), torch.cat(maps) if error_maps else None

    @torch.no_grad()
    def reconstruction_error(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Mean squared reconstruction error per image, float32 [N], pixels on the [0, 1] scale."""
        self.eval()
        errors = []
        for chunk in images.split(batch_size or self.inference_chunk):
            x = self._inference_input(chunk)
            errors.append(((self(x) - x) ** 2).mean(dim=(1, 2, 3)))
        return torch.cat(errors) if errors else torch.empty(0)


class Denoiser(SavableModel):
    """An image-to-image network that removes corruption: `x + residual(x)`, clamped to [0, 1].

    A small U-Net (one stride-2 level with a skip connection) predicts a correction to its input, so an image that
    needs no cleaning passes through almost unchanged; that is what keeps a filtered classifier's clean accuracy
    where it was. Works for 1 or 3 channels and sides of `MIN_IMAGE_SIDE` to `MAX_IMAGE_SIDE` pixels.
    """

    kind = "scanflow-denoiser"

    def __init__(self, channels: int, height: int, width: int, width_multiplier: int = 16) -> None:
        super().__init__()
        check_image_size(channels, height, width)
        self.channels, self.height, self.width = channels, height, width
        self.width_multiplier = width_multiplier
        c1, c2 = width_multiplier, 2 * width_multiplier
        self.inner = nn.Sequential(nn.Conv2d(channels, c1, 3, padding=1), nn.ReLU(inplace=True))
        self.down = nn.Sequential(
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.up = nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1)
        self.out = nn.Sequential(
            nn.Conv2d(2 * c1, c1, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, channels, 3, padding=1),
        )

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "height": self.height, "width": self.width, "width_multiplier": self.width_multiplier}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Cleaned float images in [0, 1], same shape as `x` (float in [0, 1])."""
        skip = self.inner(x)
        coarse = self.up(self.down(skip))[:, :, : x.shape[2], : x.shape[3]]
        return (x + self.out(torch.cat([skip, coarse], dim=1))).clamp(0.0, 1.0)

    @torch.no_grad()
    def clean(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Cleaned uint8 images [N, C, H, W] for a uint8 batch (the format every Scanflow edge speaks)."""
        self.eval()
        chunks = [self(self._inference_input(chunk)).mul(255.0).round().to(torch.uint8).contiguous() for chunk in images.split(batch_size or self.inference_chunk)]
        return torch.cat(chunks) if chunks else images.clone()
