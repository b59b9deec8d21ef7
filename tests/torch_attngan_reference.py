"""PyTorch AttnGAN / DM-GAN generators and discriminators for tests.

Written here from reference/attngan_family.md (§3.2-3.4, §4.2-4.3), not from
the official code: module names and nn.Sequential indices are the ones the
reference lists for the official state dicts, so `state_dict()` has the
official keys. NCHW, as officially. Includes the attention padding-mask bug
(§3.3): the (B, T) mask is tiled with `repeat(N, 1)`.

Tests import this module as `torch_attngan_reference` (tests/ is on sys.path
through conftest) or `tests.torch_attngan_reference`.
"""

import torch
from torch import nn


class Glu(nn.Module):
  """First half of the channels times the sigmoid of the second half."""

  def forward(self, x):
    half = x.shape[1] // 2
    return x[:, :half] * torch.sigmoid(x[:, half:])


def conv3x3(cin, cout):
  return nn.Conv2d(cin, cout, 3, 1, 1, bias=False)


def up_block(cin, cout):
  # Indices: 0 upsample, 1 conv, 2 BN, 3 GLU.
  return nn.Sequential(nn.Upsample(scale_factor=2, mode='nearest'),
                       conv3x3(cin, 2 * cout), nn.BatchNorm2d(2 * cout), Glu())


class ResBlock(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.block = nn.Sequential(conv3x3(channels, 2 * channels),
                               nn.BatchNorm2d(2 * channels), Glu(),
                               conv3x3(channels, channels),
                               nn.BatchNorm2d(channels))

  def forward(self, x):
    return x + self.block(x)


class CaNet(nn.Module):

  def __init__(self, nef, ncf):
    super().__init__()
    self.ncf = ncf
    self.fc = nn.Linear(nef, 4 * ncf)
    self.glu = Glu()

  def forward(self, sentence, eps):
    x = self.glu(self.fc(sentence))
    mu, logvar = x[:, :self.ncf], x[:, self.ncf:]
    return mu + eps * torch.exp(0.5 * logvar), mu, logvar


class InitStage(nn.Module):
  """Built with gf = 16 * ngf channels at 4x4."""

  def __init__(self, gf, in_dim):
    super().__init__()
    self.gf = gf
    self.fc = nn.Sequential(nn.Linear(in_dim, gf * 16 * 2, bias=False),
                            nn.BatchNorm1d(gf * 16 * 2), Glu())
    self.upsample1 = up_block(gf, gf // 2)
    self.upsample2 = up_block(gf // 2, gf // 4)
    self.upsample3 = up_block(gf // 4, gf // 8)
    self.upsample4 = up_block(gf // 8, gf // 16)

  def forward(self, z, c):
    x = self.fc(torch.cat([c, z], 1)).view(-1, self.gf, 4, 4)
    for up in (self.upsample1, self.upsample2, self.upsample3, self.upsample4):
      x = up(x)
    return x


class ImageHead(nn.Module):

  def __init__(self, ngf):
    super().__init__()
    self.img = nn.Sequential(conv3x3(ngf, 3), nn.Tanh())

  def forward(self, h):
    return self.img(h)


def masked_softmax_bug(logits, padding):
  """logits (B, N, T); padding (B, T) True at padded words; the official tiling."""
  batch, queries, words = logits.shape
  flat = logits.reshape(batch * queries, words)
  flat = flat.masked_fill(padding.repeat(queries, 1), -float('inf'))
  return torch.softmax(flat, dim=1).view(batch, queries, words)


class GlobalAttention(nn.Module):

  def __init__(self, idf, cdf):
    super().__init__()
    self.conv_context = nn.Conv2d(cdf, idf, 1, 1, 0, bias=False)

  def forward(self, h, words, padding):
    batch, channels, height, width = h.shape
    target = h.view(batch, channels, height * width).transpose(1, 2)
    source = self.conv_context(words.unsqueeze(3)).squeeze(3)  # (B, C, T)
    attn = masked_softmax_bug(torch.bmm(target, source), padding)
    context = torch.bmm(source, attn.transpose(1, 2))
    return (context.view(batch, channels, height, width),
            attn.transpose(1, 2).reshape(batch, -1, height, width))


class AttnNextStage(nn.Module):

  def __init__(self, ngf, nef, r_num):
    super().__init__()
    self.att = GlobalAttention(ngf, nef)
    self.residual = nn.Sequential(*[ResBlock(2 * ngf) for _ in range(r_num)])
    self.upsample = up_block(2 * ngf, ngf)

  def forward(self, h, words, padding):
    context, attn = self.att(h, words, padding)
    x = self.residual(torch.cat([h, context], 1))
    return self.upsample(x), attn


class MemoryNextStage(nn.Module):
  """DM-GAN: memory writing, key addressing / value reading, response gate."""

  def __init__(self, ngf, nef, r_num):
    super().__init__()
    self.A = nn.Linear(nef, 1, bias=False)  # pylint: disable=invalid-name
    self.B = nn.Linear(ngf, 1, bias=False)  # pylint: disable=invalid-name
    self.M_w = nn.Sequential(nn.Conv1d(nef, 2 * ngf, 1), nn.ReLU())  # pylint: disable=invalid-name
    self.M_r = nn.Sequential(nn.Conv1d(ngf, 2 * ngf, 1), nn.ReLU())  # pylint: disable=invalid-name
    self.key = nn.Sequential(nn.Conv1d(2 * ngf, ngf, 1), nn.ReLU())
    self.value = nn.Sequential(nn.Conv1d(2 * ngf, ngf, 1), nn.ReLU())
    self.response_gate = nn.Sequential(nn.Conv2d(2 * ngf, 1, 1), nn.Sigmoid())
    self.residual = nn.Sequential(*[ResBlock(2 * ngf) for _ in range(r_num)])
    self.upsample = up_block(2 * ngf, ngf)

  def forward(self, h, words, padding):
    batch, channels, height, width = h.shape
    num_words = words.shape[2]
    pooled = h.mean(dim=(2, 3)).detach()  # AvgPool2d(size) of the whole map
    gate = torch.sigmoid(self.A(words.transpose(1, 2))
                         + self.B(pooled).unsqueeze(1)).transpose(1, 2)
    from_words = self.M_w(words)
    from_image = self.M_r(pooled.unsqueeze(2).repeat(1, 1, num_words))
    memory = from_words * gate + from_image * (1 - gate)
    keys, values = self.key(memory), self.value(memory)
    query = h.view(batch, channels, height * width).transpose(1, 2)
    attn = masked_softmax_bug(torch.bmm(query, keys), padding)
    read = torch.bmm(values, attn.transpose(1, 2)).view(
        batch, channels, height, width)
    response = self.response_gate(torch.cat([h, read], 1))
    h_new = h * (1 - response) + read * response
    x = self.residual(torch.cat([h_new, h_new], 1))
    return (self.upsample(x),
            attn.transpose(1, 2).reshape(batch, num_words, height, width))


class Generator(nn.Module):
  """G_NET: CA, init stage, then attention (AttnGAN) or memory (DM-GAN) stages."""

  def __init__(self, family, ngf, r_num, nef, ncf, z_dim, num_stages):
    super().__init__()
    self.num_stages = num_stages
    self.ca_net = CaNet(nef, ncf)
    self.h_net1 = InitStage(16 * ngf, ncf + z_dim)
    self.img_net1 = ImageHead(ngf)
    stage = AttnNextStage if family == 'attngan' else MemoryNextStage
    for i in range(2, num_stages + 1):
      setattr(self, f'h_net{i}', stage(ngf, nef, r_num))
      setattr(self, f'img_net{i}', ImageHead(ngf))

  def forward(self, z, sentence, words, padding, eps):
    c, mu, logvar = self.ca_net(sentence, eps)
    h = self.h_net1(z, c)
    images, maps = [self.img_net1(h)], []
    for i in range(2, self.num_stages + 1):
      h, attn = getattr(self, f'h_net{i}')(h, words, padding)
      images.append(getattr(self, f'img_net{i}')(h))
      maps.append(attn)
    return images, maps, mu, logvar


class RnnEncoder(nn.Module):
  """DAMSM RNN_ENCODER (§2.1): Embedding -> Dropout -> packed BiLSTM.

  Returns words (B, nef, T_max), zero at padding, and the sentence (B, nef) =
  [forward h at the last word, backward h at the first]. Unsorted batches are
  allowed (enforce_sorted=False keeps the input order).
  """

  def __init__(self, n_words, embedding_dim, nef):
    super().__init__()
    self.encoder = nn.Embedding(n_words, embedding_dim)
    self.drop = nn.Dropout(0.5)
    self.rnn = nn.LSTM(embedding_dim, nef // 2, 1, batch_first=True,
                       bidirectional=True)

  def forward(self, captions, lengths):
    packed = nn.utils.rnn.pack_padded_sequence(
        self.drop(self.encoder(captions)), lengths, batch_first=True,
        enforce_sorted=False)
    output, (h_n, _) = self.rnn(packed)
    words = nn.utils.rnn.pad_packed_sequence(output, batch_first=True)[0]
    sentence = h_n.transpose(0, 1).reshape(captions.shape[0], -1)
    return words.transpose(1, 2), sentence


# --- Discriminators -----------------------------------------------------------


class SpectralNorm(nn.Module):
  """The DM-GAN wrapper: weight_bar, weight_u, weight_v; one power step per call."""

  def __init__(self, module):
    super().__init__()
    self.module = module
    weight = module.weight.data
    out = weight.shape[0]
    u = torch.randn(out)
    v = torch.randn(weight[0].numel())
    del module._parameters['weight']  # pylint: disable=protected-access
    self.module.register_parameter('weight_u', nn.Parameter(
        u / u.norm(), requires_grad=False))
    self.module.register_parameter('weight_v', nn.Parameter(
        v / v.norm(), requires_grad=False))
    self.module.register_parameter('weight_bar', nn.Parameter(weight))

  def forward(self, *args):
    w_bar = self.module.weight_bar
    matrix = w_bar.view(w_bar.shape[0], -1)
    u = self.module.weight_u
    v = matrix.t().mv(u)
    v = v / (v.norm() + 1e-12)
    u = matrix.mv(v)
    u = u / (u.norm() + 1e-12)
    self.module.weight_u.data.copy_(u.data)
    self.module.weight_v.data.copy_(v.data)
    sigma = u.dot(matrix.mv(v))
    self.module.weight = w_bar / sigma
    return self.module.forward(*args)


def _conv(cin, cout, kernel, stride, padding, spectral):
  if spectral:
    return SpectralNorm(nn.Conv2d(cin, cout, kernel, stride, padding, bias=True))
  return nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)


def _block(cin, cout, kernel, spectral):
  stride = 2 if kernel == 4 else 1
  layers = [_conv(cin, cout, kernel, stride, 1, spectral)]
  if not spectral:
    layers.append(nn.BatchNorm2d(cout))
  layers.append(nn.LeakyReLU(0.2))
  return nn.Sequential(*layers)


class LogitsHead(nn.Module):

  def __init__(self, ndf, nef, conditional, spectral):
    super().__init__()
    self.conditional = conditional
    if conditional:
      self.jointConv = _block(8 * ndf + nef, 8 * ndf, 3, spectral)  # pylint: disable=invalid-name
    self.outlogits = nn.Sequential(nn.Conv2d(8 * ndf, 1, 4, 4))

  def forward(self, h, sentence=None):
    if self.conditional:
      tiled = sentence.view(*sentence.shape, 1, 1).repeat(1, 1, 4, 4)
      h = self.jointConv(torch.cat([h, tiled], 1))
    return self.outlogits(h).view(-1)  # logits, before the official Sigmoid


class Discriminator(nn.Module):
  """D_NET64/128/256; BN (AttnGAN) or spectral norm without BN (DM-GAN)."""

  def __init__(self, family, ndf, image_size, nef):
    super().__init__()
    sn = family == 'dmgan'
    trunk = [_conv(3, ndf, 4, 2, 1, sn), nn.LeakyReLU(0.2)]
    for i in range(1, 4):
      trunk.append(_conv(ndf * 2**(i - 1), ndf * 2**i, 4, 2, 1, sn))
      if not sn:
        trunk.append(nn.BatchNorm2d(ndf * 2**i))
      trunk.append(nn.LeakyReLU(0.2))
    self.img_code_s16 = nn.Sequential(*trunk)
    self.extra = []
    if image_size == 128:
      self.img_code_s32 = _block(8 * ndf, 16 * ndf, 4, sn)
      self.img_code_s32_1 = _block(16 * ndf, 8 * ndf, 3, sn)
      self.extra = ['img_code_s32', 'img_code_s32_1']
    elif image_size == 256:
      self.img_code_s32 = _block(8 * ndf, 16 * ndf, 4, sn)
      self.img_code_s64 = _block(16 * ndf, 32 * ndf, 4, sn)
      self.img_code_s64_1 = _block(32 * ndf, 16 * ndf, 3, sn)
      self.img_code_s64_2 = _block(16 * ndf, 8 * ndf, 3, sn)
      self.extra = ['img_code_s32', 'img_code_s64', 'img_code_s64_1',
                    'img_code_s64_2']
    self.UNCOND_DNET = LogitsHead(ndf, nef, False, sn)  # pylint: disable=invalid-name
    self.COND_DNET = LogitsHead(ndf, nef, True, sn)  # pylint: disable=invalid-name

  def forward(self, images, sentence):
    h = self.img_code_s16(images)
    for name in self.extra:
      h = getattr(self, name)(h)
    return self.UNCOND_DNET(h), self.COND_DNET(h, sentence)


def randomize_(model, seed):
  """Random weights everywhere, BN running statistics included (in place).

  Kernels N(0, 1 / fan_in) keep activations O(1) through the stages, so the
  tanh images are not saturated and comparisons stay informative.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if not tensor.is_floating_point():
        continue
      noise = torch.randn(tensor.shape, generator=gen)
      if name.endswith('running_var'):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
      elif name.endswith(('weight_u', 'weight_v')):
        tensor.copy_(noise / noise.norm())
      elif tensor.ndim >= 2:
        tensor.copy_(noise / tensor[0].numel()**0.5)
      elif name.endswith('.weight'):  # BN scale
        tensor.copy_(1.0 + 0.1 * noise)
      else:  # biases and running means
        tensor.copy_(0.1 * noise)
  return model
