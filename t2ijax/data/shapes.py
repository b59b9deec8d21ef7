"""The built-in procedural "shapes" data set: one coloured shape on a texture.

It is the default data set for demos and tests, so it needs no download. Every
image shows a single shape whose attributes (shape, colour, size, position,
background) are drawn at random; the captions are generated from those
attributes, and the attributes are kept as integer labels so that a classifier
can later judge whether a generated image matches its caption.

It is built to be hard enough that text conditioning matters (which shape and
colour cannot be guessed without the caption) yet learnable by a tiny GAN at
64x64 within minutes on a CPU: shapes are big, colours saturated and far apart,
backgrounds muted grey textures that never look like one of the colours.

Everything is deterministic given the seed and uses only the numpy Generator
it is handed, never a global RNG.
"""

import io
import math
import re
import zlib
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

from t2ijax.data.sources.base import RawExample

# The label vocabulary: attribute name -> value words, both in a fixed order;
# the integer label of a value is its index here.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    'shape': ('circle', 'square', 'triangle', 'star', 'cross'),
    'color': ('red', 'green', 'blue', 'yellow', 'purple', 'orange'),
    'size': ('small', 'large'),
    'position': ('left', 'right', 'top', 'bottom', 'center'),
    'background': ('plain', 'stripes', 'dots', 'checker'),
}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)

# A caption must state these, so that it determines the image's class and
# layout; the background is mentioned only in some captions.
REQUIRED_IN_CAPTION: tuple[str, ...] = ('shape', 'color', 'size', 'position')

NUM_CLASSES = len(ATTRIBUTES['shape']) * len(ATTRIBUTES['color'])

# Fill colours, in ATTRIBUTES['color'] order. Saturated and pairwise far apart
# (the closest pair, red and orange, is ~110 apart in RGB) so that the colour
# jitter below never makes one look like another.
COLOR_RGB: tuple[tuple[int, int, int], ...] = (
    (215, 35, 35),    # red
    (40, 165, 55),    # green
    (35, 75, 220),    # blue
    (240, 215, 30),   # yellow
    (145, 50, 190),   # purple
    (250, 135, 20),   # orange
)
_COLOR_JITTER = 15  # per channel, +-

# Shape centre anchors (x, y) as fractions of the side, in
# ATTRIBUTES['position'] order; the centre is jittered by up to
# _POSITION_JITTER around its anchor.
POSITION_ANCHORS: tuple[tuple[float, float], ...] = (
    (0.3, 0.5),   # left
    (0.7, 0.5),   # right
    (0.5, 0.3),   # top
    (0.5, 0.7),   # bottom
    (0.5, 0.5),    # center
)
_POSITION_JITTER = 0.05

# Radius of the shape's bounding circle as a fraction of the side, in
# ATTRIBUTES['size'] order: diameters of ~26% and ~46% of the side, so the
# area differs by a factor of ~3 (at least ~2.4 after jitter).
_SIZE_RADIUS = (0.13, 0.23)
_SIZE_JITTER = 0.06  # relative, +-

_MAX_ROTATION_DEGREES = 15.0  # small, so a square never looks like a diamond
_SUPERSAMPLING = 4

# --- Caption vocabulary. Every phrase is lowercase ASCII words; parse_caption
# finds them again as whole-word sequences, so no phrase of one value may
# occur inside a phrase of another value or in the template filler words.
_SHAPE_PHRASES = (
    ('circle', 'disc', 'disk'),
    ('square',),
    ('triangle',),
    ('star', 'five pointed star'),
    ('cross', 'plus sign'),
)
_COLOR_PHRASES = (
    ('red', 'scarlet', 'crimson'),
    ('green', 'emerald'),
    ('blue', 'cobalt'),
    ('yellow', 'golden'),
    ('purple', 'violet'),
    ('orange',),
)
_SIZE_PHRASES = (
    ('small', 'tiny', 'little'),
    ('large', 'big', 'huge', 'giant'),
)
_POSITION_PHRASES = (
    ('on the left', 'on the left side', 'at the left', 'in the left half',
     'to the left'),
    ('on the right', 'on the right side', 'at the right', 'in the right half',
     'to the right'),
    ('at the top', 'near the top', 'in the upper half', 'up at the top'),
    ('at the bottom', 'near the bottom', 'in the lower half',
     'down at the bottom'),
    ('in the center', 'in the middle', 'in the centre', 'at the center'),
)
_BACKGROUND_PHRASES = (
    ('plain', 'solid', 'flat'),
    ('striped', 'stripy', 'banded'),
    ('dotted', 'spotted', 'polka dot'),
    ('checkered', 'chequered', 'checkerboard'),
)
_PHRASES: dict[str, tuple[tuple[str, ...], ...]] = {
    'shape': _SHAPE_PHRASES,
    'color': _COLOR_PHRASES,
    'size': _SIZE_PHRASES,
    'position': _POSITION_PHRASES,
    'background': _BACKGROUND_PHRASES,
}
_BACKGROUND_NOUNS = ('background', 'backdrop')
_BACKGROUND_PREPOSITIONS = ('on', 'over', 'against', 'with', 'in front of')
# How often a caption also names the background.
_BACKGROUND_MENTION_PROBABILITY = 0.5

# {bg} is either empty or ' <preposition> a <texture> <noun>'.
_TEMPLATES = (
    'a {size} {color} {shape} {position}{bg}',
    'there is a {size} {color} {shape} {position}{bg}',
    '{position} a {size} {color} {shape}{bg}',
    '{position} there is a {size} {color} {shape}{bg}',
    'a {shape} that is {size} and {color} {position}{bg}',
    'this picture shows a {size} {color} {shape} {position}{bg}',
    'an image of a {size} {color} {shape} {position}{bg}',
    '{size} {color} {shape} {position}{bg}',
    'the {shape} is {color} and {size} and sits {position}{bg}',
    'we see a {color} {shape} {position} and it is {size}',
    'a {color} {shape} {position} drawn {size}{bg}',
)


def sample_attributes(rng: np.random.Generator) -> dict[str, int]:
  """Draws every attribute independently and uniformly."""
  return {name: int(rng.integers(len(values)))
          for name, values in ATTRIBUTES.items()}


def class_id(attributes: Mapping[str, int]) -> int:
  """The (shape, colour) class, used to pick mismatched captions."""
  return attributes['shape'] * len(ATTRIBUTES['color']) + attributes['color']


# --- Rendering.


def _shape_polygon(shape: str, radius: float) -> np.ndarray:
  """Vertices (n, 2) of a shape centred on the origin, pointing up (y down).

  Each fits in a circle of about `radius`, so that size and position mean the
  same for every shape; the thin triangle and star reach 10% further so they
  do not look smaller than the rest. All are centred on their centroid, so
  the drawn shape's centroid is where its position says.
  """
  if shape == 'square':
    half = 0.75 * radius
    return np.array([(-half, -half), (half, -half), (half, half),
                     (-half, half)])
  if shape == 'triangle':
    angles = np.deg2rad([-90.0, 30.0, 150.0])
    return 1.1 * radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  if shape == 'star':
    angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
    radii = np.where(np.arange(10) % 2 == 0, 1.1, 0.45) * radius
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
  if shape == 'cross':
    arm, half = radius, 0.34 * radius
    return np.array([
        (-half, -arm), (half, -arm), (half, -half), (arm, -half),
        (arm, half), (half, half), (half, arm), (-half, arm),
        (-half, half), (-arm, half), (-arm, -half), (-half, -half)])
  raise ValueError(f'no polygon for shape {shape!r}')


def _texture_pattern(background: str, side: int,
                     rng: np.random.Generator) -> np.ndarray:
  """A (side, side) uint8 pattern in [0, 255] with random frequency and phase.

  Computed from a row and a column of coordinates broadcast against each
  other, which keeps it cheap at 4x supersampling.
  """
  x = np.arange(side, dtype=np.float32)[None, :]
  y = np.arange(side, dtype=np.float32)[:, None]
  if background == 'plain':
    # A faint gradient keeps plain backgrounds from being all identical.
    angle = rng.uniform(0, 2 * math.pi)
    ramp = x * math.cos(angle) + y * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    return (64 * ramp).astype(np.uint8)
  # At small output sizes a period under ~4 output pixels would blur dots and
  # checks into the same grey grid.
  period = max(rng.uniform(0.09, 0.17) * side, 4.0 * _SUPERSAMPLING)
  phase_x, phase_y = rng.uniform(0, 1, size=2)
  if background == 'stripes':
    angle = rng.uniform(0, math.pi)
    u = (x * math.cos(angle) + y * math.sin(angle)) / period + phase_x
    on = (u % 1.0) < 0.5
  elif background == 'dots':
    dot_radius = rng.uniform(0.2, 0.3)  # in periods
    dx = (x / period + phase_x) % 1.0 - 0.5
    dy = (y / period + phase_y) % 1.0 - 0.5
    on = dx * dx + dy * dy < dot_radius * dot_radius
  elif background == 'checker':
    on = (np.floor(x / period + phase_x).astype(np.int32) +
          np.floor(y / period + phase_y).astype(np.int32)) % 2 == 1
  else:
    raise ValueError(f'unknown background {background!r}')
  return on.astype(np.uint8) * np.uint8(255)


def _background(background: str, side: int,
                rng: np.random.Generator) -> Image.Image:
  """A muted, greyish (side, side) RGB texture with a random tint."""
  grey = rng.uniform(100, 170)
  tint = rng.uniform(-12, 12, size=3)
  # The second tone is the same tint, lighter or darker: it stays grey, so it
  # never competes with the saturated shape colours.
  contrast = rng.choice([-1.0, 1.0]) * rng.uniform(25, 45)
  base = _rgb(grey + tint)
  second = _rgb(grey + tint + contrast)
  pattern = _texture_pattern(background, side, rng)
  canvas = Image.new('RGB', (side, side), base)
  # Pasting through the pattern blends in the second tone where it is set.
  canvas.paste(second, mask=Image.fromarray(pattern))
  return canvas


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
  r, g, b = (int(v) for v in np.clip(np.rint(values), 0, 255))
  return r, g, b


def _render(attributes: Mapping[str, int], size: int, rng: np.random.Generator,
            with_mask: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """Draws at 4x the size and shrinks, so edges are anti-aliased at any size."""
  shape = ATTRIBUTES['shape'][attributes['shape']]
  big = size * _SUPERSAMPLING

  fill = _rgb(np.array(COLOR_RGB[attributes['color']]) +
              rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, size=3))
  radius = (_SIZE_RADIUS[attributes['size']] * big *
            rng.uniform(1 - _SIZE_JITTER, 1 + _SIZE_JITTER))
  anchor = np.array(POSITION_ANCHORS[attributes['position']])
  center = (anchor + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER, size=2)
           ) * big
  rotation = math.radians(rng.uniform(-_MAX_ROTATION_DEGREES,
                                      _MAX_ROTATION_DEGREES))
  canvas = _background(ATTRIBUTES['background'][attributes['background']],
                       big, rng)

  mask = Image.new('L', (big, big), 0) if with_mask else None
  targets = [(ImageDraw.Draw(canvas), fill)]
  if mask is not None:
    targets.append((ImageDraw.Draw(mask), 255))
  if shape == 'circle':
    box = [center[0] - radius, center[1] - radius,
           center[0] + radius, center[1] + radius]
    for draw, colour in targets:
      draw.ellipse(box, fill=colour)
  else:
    cos, sin = math.cos(rotation), math.sin(rotation)
    vertices = _shape_polygon(shape, radius) @ np.array([[cos, sin],
                                                         [-sin, cos]])
    points = [tuple(p) for p in (vertices + center).tolist()]
    for draw, colour in targets:
      draw.polygon(points, fill=colour)

  # A box reduction by 2 before LANCZOS halves the cost and looks the same.
  image = np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS,
                                   reducing_gap=2.0), dtype=np.uint8)
  if mask is None:
    return image, None
  # Averaging 4x4 blocks gives each pixel's exact coverage, without the
  # slight ringing LANCZOS would add.
  coverage = np.asarray(mask.reduce(_SUPERSAMPLING), dtype=np.float32) / 255.0
  return image, coverage


def render_with_mask(attributes: Mapping[str, int], size: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Renders an image and the shape's coverage mask.

  Args:
    attributes: integer label per attribute name.
    size: side of the square image in pixels.
    rng: the source of all jitter (colour, size, position, rotation, texture).

  Returns:
    The (size, size, 3) uint8 image, identical to what `render` gives for the
    same rng state, and a (size, size) float32 mask in [0, 1]: the fraction of
    each pixel the shape covers.
  """
  image, mask = _render(attributes, size, rng, with_mask=True)
  return image, mask


def render(attributes: Mapping[str, int], size: int,
           rng: np.random.Generator) -> np.ndarray:
  """Renders the (size, size, 3) uint8 image the attributes describe."""
  return _render(attributes, size, rng, with_mask=False)[0]


# --- Captions.


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


def _with_articles(text: str) -> str:
  # 'a orange star' -> 'an orange star'; no phrase starts with a vowel sound
  # that is not a vowel letter, so the letter test is enough.
  return re.sub(r'\ba (?=[aeiou])', 'an ', text)


def _one_caption(attributes: Mapping[str, int],
                 rng: np.random.Generator) -> str:
  words = {name: _pick(rng, _PHRASES[name][attributes[name]])
           for name in REQUIRED_IN_CAPTION}
  template = _pick(rng, _TEMPLATES)
  bg = ''
  if '{bg}' in template and rng.random() < _BACKGROUND_MENTION_PROBABILITY:
    texture = _pick(rng, _BACKGROUND_PHRASES[attributes['background']])
    bg = (f' {_pick(rng, _BACKGROUND_PREPOSITIONS)} a {texture} '
          f'{_pick(rng, _BACKGROUND_NOUNS)}')
  return _with_articles(template.format(bg=bg, **words))


def captions_for(attributes: Mapping[str, int], n: int,
                 rng: np.random.Generator) -> list[str]:
  """Returns n varied captions that each state shape, colour, size, position.

  Captions of one image differ from each other; the vocabulary allows
  thousands per image, so the retry bound is only a guard.
  """
  captions: list[str] = []
  for _ in range(50 * n):
    if len(captions) == n:
      break
    caption = _one_caption(attributes, rng)
    if caption not in captions:
      captions.append(caption)
  while len(captions) < n:  # unreachable with the tables above
    captions.append(_one_caption(attributes, rng))
  return captions


def _phrase_tokens() -> dict[str, list[tuple[tuple[str, ...], int]]]:
  return {name: [(tuple(phrase.split()), value)
                 for value, phrases in enumerate(table) for phrase in phrases]
          for name, table in _PHRASES.items()}


_PHRASE_TOKENS = _phrase_tokens()


def _contains(tokens: Sequence[str], phrase: tuple[str, ...]) -> bool:
  n = len(phrase)
  return any(tuple(tokens[i:i + n]) == phrase
             for i in range(len(tokens) - n + 1))


def parse_caption(text: str) -> dict[str, int]:
  """Recovers the attributes a caption states, via the synonym tables.

  Args:
    text: a caption, e.g. one from captions_for.

  Returns:
    Integer label per stated attribute, in ATTRIBUTE_NAMES order; always
    shape, colour, size and position, and the background if it is named.

  Raises:
    ValueError: if a required attribute is missing, or any attribute is
      stated with two different values.
  """
  tokens = re.findall(r'\w+', text.lower())
  parsed: dict[str, int] = {}
  for name in ATTRIBUTE_NAMES:
    values = {value for phrase, value in _PHRASE_TOKENS[name]
              if _contains(tokens, phrase)}
    if len(values) > 1:
      named = sorted(ATTRIBUTES[name][v] for v in values)
      raise ValueError(f'caption {text!r} states several {name}s: {named}')
    if values:
      parsed[name] = values.pop()
    elif name in REQUIRED_IN_CAPTION:
      raise ValueError(f'caption {text!r} does not state the {name}')
  return parsed


# --- The data set.


def _split_index(split: str) -> int:
  # crc32, unlike hash(), is the same in every process.
  return zlib.crc32(split.encode('utf-8'))


def _png_bytes(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def make_example(split: str, index: int, image_size: int,
                 captions_per_image: int = 10, seed: int = 0) -> RawExample:
  """Example `index` of a split; it depends on nothing generated before it."""
  sequence = np.random.SeedSequence([seed, _split_index(split), index])
  # Separate streams, so that e.g. the number of captions does not change the
  # image.
  attribute_rng, render_rng, caption_rng = (
      np.random.default_rng(child) for child in sequence.spawn(3))
  attributes = sample_attributes(attribute_rng)
  image = render(attributes, image_size, render_rng)
  return RawExample(
      key=f'{split}_{index:06d}',
      captions=captions_for(attributes, captions_per_image, caption_rng),
      class_id=class_id(attributes),
      image_bytes=_png_bytes(image),
      attributes=[attributes[name] for name in ATTRIBUTE_NAMES])


def generate(split: str, num_examples: int, image_size: int,
             captions_per_image: int = 10,
             seed: int = 0) -> Iterator[RawExample]:
  """Yields examples 0..num_examples-1 of a split (e.g. 'train', 'test')."""
  for index in range(num_examples):
    yield make_example(split, index, image_size, captions_per_image, seed)
