"""DF-GAN's official networks and train step in PyTorch, written from the reference.

Built from reference/stackgan_dfgan_family.md §6.2-6.4 (layer order, names,
initialisation, losses), NCHW, exactly as the official modules compute (up-
sampling before the shortcut and fuse, 1x1 before the pool), so the Flax port's
rearrangements are checked against the plain form. Used by tests/test_dfgan.py
(equality with the Flax port) and bench/dfgan_step.py (speed).
"""

import collections

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def channel_pairs(nf: int, image_size: int) -> list[tuple[int, int]]:
  """D's (in, out) per block: nf * min(2^i, 8) for i < log2(size) - 1."""
  widths = [nf * min(2 ** i, 8) for i in range(int(np.log2(image_size)) - 1)]
  return list(zip(widths[:-1], widths[1:]))


class Affine(nn.Module):
  """gamma(c) * x + beta(c); each an MLP Linear(cond, C) ReLU Linear(C, C)."""

  def __init__(self, cond_dim, channels):
    super().__init__()
    def mlp():
      return nn.Sequential(collections.OrderedDict([
          ('linear1', nn.Linear(cond_dim, channels)),
          ('relu1', nn.ReLU()),
          ('linear2', nn.Linear(channels, channels))]))
    self.fc_gamma, self.fc_beta = mlp(), mlp()
    nn.init.zeros_(self.fc_gamma.linear2.weight)
    nn.init.ones_(self.fc_gamma.linear2.bias)
    nn.init.zeros_(self.fc_beta.linear2.weight)
    nn.init.zeros_(self.fc_beta.linear2.bias)

  def forward(self, x, cond):
    return (self.fc_gamma(cond)[:, :, None, None] * x
            + self.fc_beta(cond)[:, :, None, None])


class DFBLK(nn.Module):

  def __init__(self, cond_dim, channels):
    super().__init__()
    self.affine0 = Affine(cond_dim, channels)
    self.affine1 = Affine(cond_dim, channels)

  def forward(self, x, cond):
    h = F.leaky_relu(self.affine0(x, cond), 0.2)
    return F.leaky_relu(self.affine1(h, cond), 0.2)


class G_Block(nn.Module):  # pylint: disable=invalid-name

  def __init__(self, cond_dim, in_ch, out_ch):
    super().__init__()
    self.learnable_sc = in_ch != out_ch
    self.c1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
    self.c2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
    self.fuse1 = DFBLK(cond_dim, in_ch)
    self.fuse2 = DFBLK(cond_dim, out_ch)
    if self.learnable_sc:
      self.c_sc = nn.Conv2d(in_ch, out_ch, 1, 1, 0)

  def forward(self, x, cond):
    x = F.interpolate(x, scale_factor=2)     # nearest
    shortcut = self.c_sc(x) if self.learnable_sc else x
    h = self.c2(self.fuse2(self.c1(self.fuse1(x, cond)), cond))
    return shortcut + h


class NetG(nn.Module):

  def __init__(self, ngf=32, nz=100, cond_dim=256, imsize=256):
    super().__init__()
    self.ngf = ngf
    self.fc = nn.Linear(nz, ngf * 8 * 4 * 4)
    pairs = [(b, a) for a, b in reversed(channel_pairs(ngf, imsize))]
    self.GBlocks = nn.ModuleList(
        [G_Block(cond_dim + nz, i, o) for i, o in pairs])
    self.to_rgb = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(ngf, 3, 3, 1, 1), nn.Tanh())

  def forward(self, noise, sentence):
    h = self.fc(noise).view(noise.shape[0], 8 * self.ngf, 4, 4)
    cond = torch.cat([noise, sentence], dim=1)
    for block in self.GBlocks:
      h = block(h, cond)
    return self.to_rgb(h)


class D_Block(nn.Module):  # pylint: disable=invalid-name

  def __init__(self, fin, fout):
    super().__init__()
    self.learned_shortcut = fin != fout
    self.conv_r = nn.Sequential(
        nn.Conv2d(fin, fout, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
        nn.Conv2d(fout, fout, 3, 1, 1, bias=False), nn.LeakyReLU(0.2))
    self.conv_s = nn.Conv2d(fin, fout, 1, 1, 0)   # present even when unused
    self.gamma = nn.Parameter(torch.zeros(1))

  def forward(self, x):
    res = self.conv_r(x)
    if self.learned_shortcut:
      x = self.conv_s(x)
    return F.avg_pool2d(x, 2) + self.gamma * res


class NetD(nn.Module):

  def __init__(self, ndf=32, imsize=256):
    super().__init__()
    self.conv_img = nn.Conv2d(3, ndf, 3, 1, 1)
    self.DBlocks = nn.ModuleList([D_Block(i, o) for i, o in channel_pairs(ndf, imsize)])

  def forward(self, x):
    h = self.conv_img(x)
    for block in self.DBlocks:
      h = block(h)
    return h


class NetC(nn.Module):

  def __init__(self, ndf=32, cond_dim=256):
    super().__init__()
    self.cond_dim = cond_dim
    self.joint_conv = nn.Sequential(
        nn.Conv2d(ndf * 8 + cond_dim, ndf * 2, 3, 1, 1, bias=False), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False))

  def forward(self, features, sentence):
    tiled = sentence.view(-1, self.cond_dim, 1, 1).repeat(1, 1, 4, 4)
    return self.joint_conv(torch.cat([features, tiled], dim=1))


def ma_gp(image, sentence, out, k=2.0, p=6.0):
  grads = torch.autograd.grad(outputs=out, inputs=(image, sentence),
                              grad_outputs=torch.ones_like(out),
                              retain_graph=True, create_graph=True)
  flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)
  return k * torch.mean(torch.sqrt(torch.sum(flat ** 2, dim=1)) ** p)


def d_loss(netD, netC, image, sentence, fake, k=2.0, p=6.0):
  """The official D objective (image and sentence must require grad)."""
  real_features = netD(image)
  out_real = netC(real_features, sentence)
  real = F.relu(1.0 - out_real).mean()
  mismatched = torch.cat([real_features[1:], real_features[:1]], dim=0)
  mismatch = F.relu(1.0 + netC(mismatched, sentence)).mean()
  fake_loss = F.relu(1.0 + netC(netD(fake.detach()), sentence)).mean()
  penalty = ma_gp(image, sentence, out_real, k, p)
  return real + (fake_loss + mismatch) / 2.0 + penalty, penalty


def train_step(netG, netD, netC, opt_g, opt_d, image, sentence, noise):
  """One official iteration: D step (hinge + MA-GP), then G step."""
  image = image.requires_grad_()
  sentence = sentence.requires_grad_()
  fake = netG(noise, sentence)
  loss_d, _ = d_loss(netD, netC, image, sentence, fake)
  opt_d.zero_grad()
  loss_d.backward()
  opt_d.step()
  loss_g = -netC(netD(fake), sentence).mean()
  opt_g.zero_grad()
  loss_g.backward()
  opt_g.step()
  return loss_d.detach(), loss_g.detach()


def optimizers(netG, netD, netC):
  opt_g = torch.optim.Adam(netG.parameters(), lr=1e-4, betas=(0.0, 0.9))
  opt_d = torch.optim.Adam(list(netD.parameters()) + list(netC.parameters()),
                           lr=4e-4, betas=(0.0, 0.9))
  return opt_g, opt_d


def randomize(*modules, seed=0):
  """Every parameter random (not the zero/identity init), of sane scale."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in modules:
      for name, p in module.named_parameters():
        if p.ndim >= 2:
          fan_in = p[0].numel()
          p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))
        else:
          p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        if name.endswith('fc_gamma.linear2.bias'):
          p.add_(1.0)
        if name.endswith('gamma') and p.numel() == 1:
          p.fill_(0.7)


# ---- weights: torch state dict -> flax params -----------------------------------


def flax_path(key: str) -> tuple[str, ...]:
  """'GBlocks.3.fuse1.affine0.fc_gamma.linear1.weight' -> flax path tuple."""
  parts = key.split('.')
  out = []
  for part in parts:
    if part.isdigit():
      if out[-1] == 'to_rgb':
        continue        # to_rgb.1 is the conv after the LeakyReLU
      out[-1] = f'{out[-1]}_{part}'
    elif part == 'weight':
      out.append('kernel')
    else:
      out.append(part)
  return tuple(out)


def to_flax(state_dict) -> dict:
  """A torch state dict -> nested flax params (conv OIHW -> HWIO, Linear transposed)."""
  params = {}
  for key, value in state_dict.items():
    value = value.detach().cpu().numpy().copy()   # torch steps update in place
    if key.endswith('weight'):
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    node = params
    *parents, leaf = flax_path(key)
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return params
