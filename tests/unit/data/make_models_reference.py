"""Writes `models_28x28_reference.pt`: small 28x28 grey models and their outputs, as the models' code computed them
before the models were generalised to other image sizes (commit 17151e3). `test_models.py` checks that today's
code still computes the same outputs from the same weights. Re-run only for an intended change of the 28x28 path:
`PYTHONPATH=. python tests/unit/data/make_models_reference.py`."""

from __future__ import annotations

from pathlib import Path

import torch

from scanflow.artifacts import save_state
from scanflow.models import Autoencoder, Classifier, Denoiser

OUT = Path(__file__).with_name("models_28x28_reference.pt")


def _images(seed: int, n: int) -> torch.Tensor:
    """Blobs on a dark background, uint8 [n, 1, 28, 28]: structured enough that a few steps change the weights."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centres = torch.rand(n, 2, generator=generator) * 16 + 6
    radius = torch.rand(n, 1, 1, generator=generator) * 5 + 3
    distance = ((rows - centres[:, 0, None, None]) ** 2 + (cols - centres[:, 1, None, None]) ** 2).sqrt()
    blob = (1 - distance / radius).clamp(0, 1) + 0.1 * torch.rand(n, 28, 28, generator=generator)
    return (blob.clamp(0, 1) * 255).round().to(torch.uint8).unsqueeze(1)


def main() -> None:
    torch.manual_seed(0)
    train, images = _images(0, 256), _images(1, 32)
    classifier = Classifier(1, 28, 28, 10, width_multiplier=8, hidden=16)
    classifier.set_normalization(train)
    autoencoder = Autoencoder(1, 28, 28, latent_dim=8)
    denoiser = Denoiser(1, 28, 28, width_multiplier=8)
    labels = torch.arange(len(train)) % 10
    x = train.float() / 255
    for model, loss_of in (
        (classifier, lambda: torch.nn.functional.cross_entropy(classifier(x), labels)),
        (autoencoder, lambda: ((autoencoder(x) - x) ** 2).mean()),
        (denoiser, lambda: ((denoiser(x) - x) ** 2).mean()),
    ):
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(5):
            optimizer.zero_grad()
            loss_of().backward()
            optimizer.step()
        model.eval()
    z = autoencoder.embed(images)
    latents, errors = autoencoder.embed_with_error(images)
    with torch.no_grad():
        decoded_for_training = autoencoder.train().decode(z[:4])
        autoencoder.eval()
    outputs = {
        "probabilities": classifier.predict_proba(images),
        "latents": latents,
        "errors": errors,
        "decoded": autoencoder.decode(z[:4]).detach(),
        "decoded_for_training": decoded_for_training,
        "reconstruction_errors": autoencoder.reconstruction_error(images),
        "cleaned": denoiser.clean(images),
    }
    save_state({"classifier": classifier, "autoencoder": autoencoder, "denoiser": denoiser, "images": images, "outputs": outputs}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
