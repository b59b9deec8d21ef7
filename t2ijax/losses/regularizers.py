"""Regularisers of the StackGAN family: color consistency (StackGAN++).

The KL term of conditioning augmentation is `t2ijax.trainers.gan.kl_loss`
(the official mean-reduced form, shared by StackGAN, StackGAN++ and AttnGAN).
"""

from typing import Sequence

import jax
import jax.numpy as jnp

# StackGAN++ weighs the covariance term 5x the mean term (COLOR_LOSS * 5).
COVARIANCE_FACTOR = 5.0


def mean_covariance(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-image channel means (B, C) and C x C pixel covariances (B, C, C).

  The covariance divides by the number of pixels (not pixels - 1), as the
  official compute_mean_covariance does.
  """
  b, h, w, c = images.shape
  pixels = images.reshape(b, h * w, c)
  mu = pixels.mean(axis=1)
  centred = pixels - mu[:, None, :]
  covariance = jnp.einsum('bpi,bpj->bij', centred, centred) / (h * w)
  return mu, covariance


def color_consistency(images: Sequence[jax.Array], weight: float
                      ) -> dict[str, jax.Array]:
  """StackGAN++'s color-consistency terms between adjacent branches.

  For each adjacent pair (finer, coarser) the coarser image is held fixed
  (stop_gradient) and the finer one is pulled towards its colour statistics:
    weight * MSE(mu_fine, mu_coarse) + 5 * weight * MSE(Sigma_fine, Sigma_coarse)
  with MSE the mean over elements (lambda1 = 50, lambda2 = 250 in the official
  unconditional configs, weight 0 for birds).

  Args:
    images: the branches' images, coarse to fine, (B, S_k, S_k, 3) each.
    weight: COLOR_LOSS (alpha).

  Returns:
    {'color_mu{k}', 'color_cov{k}'} for k = 1 .. len(images) - 1, the pair
    (images[k], images[k - 1]), already weighted.
  """
  out = {}
  for k in range(1, len(images)):
    mu_fine, cov_fine = mean_covariance(images[k])
    mu_coarse, cov_coarse = mean_covariance(jax.lax.stop_gradient(images[k - 1]))
    out[f'color_mu{k}'] = weight * jnp.mean(jnp.square(mu_fine - mu_coarse))
    out[f'color_cov{k}'] = (COVARIANCE_FACTOR * weight
                            * jnp.mean(jnp.square(cov_fine - cov_coarse)))
  return out
