"""AttnGAN and DM-GAN: the shared GAN trainer with their generators and Ds."""

from t2ijax import errors
from t2ijax.models import attngan
from t2ijax.models import dmgan
from t2ijax.trainers import gan
from t2ijax.trainers import sampling


class AttnGan(gan.TextToImageGan):
  # bfloat16 by casting at the network boundary (t2ijax/precision.py).
  compute_dtypes = ("float32", "bfloat16")
  generator_module = attngan.Generator
  discriminator_module = attngan.Discriminator

  def make_generator(self):
    m, base = self.config.model, self.sizes[0]
    expected = [base * 2**i for i in range(len(self.sizes))]
    if base not in attngan.BASE_SIZES or self.sizes != expected:
      raise errors.ConfigError(
          f"data.image_sizes={tuple(self.sizes)}: each stage doubles the last, from 64 "
          "(official: 64, 128, 256) or 32 (small demos: 32, 64, 128)")
    return self.generator_module(
        ngf=m.ngf, r_num=m.r_num, z_dim=m.z_dim, ncf=m.ncf, nef=m.nef,
        num_stages=m.num_stages, official_mask_bug=m.official_mask_bug, base_size=base)

  def make_discriminator(self, image_size):
    m = self.config.model
    return self.discriminator_module(ndf=m.ndf, image_size=image_size, nef=m.nef)

  sample_command = staticmethod(sampling.sample_command)


class DmGan(AttnGan):
  generator_module = dmgan.Generator
  discriminator_module = dmgan.Discriminator
