"""CIFAR-10's crop-and-flip augmentation (advlab.data.augment): the vectorized batch op against a per-example
loop, every output a shifted (maybe mirrored) copy with zeros only where the padding was, one generator
deciding everything, and the draws spread as torchvision's RandomCrop(32, padding=4) + flip spread them."""

from __future__ import annotations

import pytest
import torch

from advlab.data.augment import AUGMENTATIONS, augment, crop_flip, draw_crop_flip
from advlab.errors import AdvlabError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """One example, one pixel at a time: torchvision's RandomCrop with zero fill, then the flip."""
    dy, dx, flip = draw_crop_flip(len(x), padding, generator, x.device)
    n, c, h, w = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for i in range(n):
        for row in range(h):
            for col in range(w):
                source_row = int(dy[i]) + row - padding
                source_col = int(dx[i]) + (w - 1 - col if flip[i] else col) - padding
                inside = 0 <= source_row < h and 0 <= source_col < w
                out[i, :, row, col] = x[i, :, source_row, source_col] if inside else 0.0
    return out


@pytest.mark.parametrize("padding, shape", [(4, (12, 3, 8, 8)), (2, (6, 2, 5, 7)), (0, (6, 1, 4, 4))])
def test_matches_a_per_example_loop(padding, shape):
    x = torch.rand(*shape, generator=_gen(1))
    out = crop_flip(x, padding=padding, generator=_gen(7))
    torch.testing.assert_close(out, _reference(x, padding, _gen(7)), rtol=0, atol=0)
    assert not torch.equal(out, x)  # 12 or 6 examples: at least one is moved or mirrored


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (see the device tool)")
def test_on_cuda_with_a_cuda_generator():
    x = torch.rand(6, 3, 8, 8, generator=_gen(1)).cuda().contiguous(memory_format=torch.channels_last)
    out = crop_flip(x, generator=torch.Generator(device="cuda").manual_seed(7))
    assert out.is_cuda and out.is_contiguous(memory_format=torch.channels_last)
    expected = _reference(x, 4, torch.Generator(device="cuda").manual_seed(7))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_every_output_is_a_shifted_copy_with_zeros_only_in_the_border():
    # Distinct pixel values (all above 0) make the crop's offset and the flip readable from the output.
    n, c, h, w, padding = 16, 2, 6, 6, 3
    x = (torch.arange(n * c * h * w, dtype=torch.float32) + 1).reshape(n, c, h, w) / (n * c * h * w)
    out = crop_flip(x, padding=padding, generator=_gen(3))
    seen = set()
    for i in range(n):
        matches = []
        padded = torch.nn.functional.pad(x[i], (padding,) * 4)
        for dy in range(2 * padding + 1):
            for dx in range(2 * padding + 1):
                crop = padded[:, dy : dy + h, dx : dx + w]
                for flip in (False, True):
                    if torch.equal(out[i], crop.flip(-1) if flip else crop):
                        matches.append((dy, dx, flip))
        assert len(matches) == 1, f"example {i} is not one crop of its padded image: {matches}"
        seen.add(matches[0])
        dy, dx, flip = matches[0]
        zeros = out[i] == 0
        expected = torch.ones(h, w, dtype=torch.bool)  # zero exactly where the crop window left the image
        expected[max(0, padding - dy) : h + padding - dy, max(0, padding - dx) : w + padding - dx] = False
        assert torch.equal(zeros, (expected.flip(-1) if flip else expected).expand(c, h, w))
    assert len(seen) > 4  # examples drew their own offsets, not one shared crop


def test_same_seed_same_batch_other_seed_other_batch():
    x = torch.rand(32, 3, 8, 8, generator=_gen(0))
    assert torch.equal(crop_flip(x, generator=_gen(5)), crop_flip(x, generator=_gen(5)))
    assert not torch.equal(crop_flip(x, generator=_gen(5)), crop_flip(x, generator=_gen(6)))
    generator = _gen(5)
    first, second = crop_flip(x, generator=generator), crop_flip(x, generator=generator)
    assert not torch.equal(first, second)  # the generator advances: each batch gets new draws
    torch.manual_seed(0)
    a = augment("crop-flip", x, generator=_gen(9))
    torch.manual_seed(1)
    assert torch.equal(a, augment("crop-flip", x, generator=_gen(9)))  # the global RNG plays no part


def test_draws_cover_every_offset_and_flip_half_the_time():
    padding, n = 4, 20_000
    dy, dx, flip = draw_crop_flip(n, padding, _gen(0), "cpu")
    for offsets in (dy, dx):
        counts = torch.bincount(offsets, minlength=2 * padding + 1)
        assert len(counts) == 2 * padding + 1  # nothing outside 0..2p
        # uniform: n/9 ≈ 2,222 each, binomial sd ≈ 44
        assert counts.min() > n / 9 - 250 and counts.max() < n / 9 + 250, counts.tolist()
    assert abs(flip.float().mean().item() - 0.5) < 0.02  # sd 0.0035
    assert not torch.equal(dy, dx)  # the axes are drawn independently


def test_one_lit_pixel_lands_everywhere_it_can():
    x = torch.zeros(4000, 1, 3, 3)
    x[:, :, 1, 0] = 1.0  # one lit pixel, left of centre: where it lands tells the offset and the flip
    out = crop_flip(x, padding=1, generator=_gen(2))
    lit = out[:, 0].reshape(len(x), -1)
    landed = lit.argmax(1)[lit.sum(1) > 0]
    assert len(torch.unique(landed)) == 9  # rows 0-2 by offset, columns 0-1 shifted, 1-2 mirrored
    kept = (lit.sum(1) > 0).float().mean().item()
    assert abs(kept - 2 / 3) < 0.03  # lost only when dx = 2 shifts it out: 1/3 of crops (sd 0.0075)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_memory_format_kept_and_input_untouched(memory_format, dtype):
    x = torch.rand(8, 3, 10, 10, generator=_gen(0), dtype=dtype).contiguous(memory_format=memory_format)
    before = x.clone()
    out = crop_flip(x, generator=_gen(1))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.is_contiguous(memory_format=memory_format)
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
    assert torch.equal(out, crop_flip(x.contiguous(), generator=_gen(1)))  # the layout changes no value


def test_padding_zero_only_flips():
    x = torch.rand(64, 3, 5, 5, generator=_gen(0))
    out = crop_flip(x, padding=0, generator=_gen(4))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.equal(flipped | (out == x).flatten(1).all(1), torch.ones(64, dtype=torch.bool))
    assert 0 < flipped.sum() < 64


def test_augment_by_name():
    x = torch.rand(4, 3, 8, 8, generator=_gen(0))
    assert AUGMENTATIONS == ("none", "crop-flip")
    assert augment("none", x, generator=_gen(0)) is x
    assert torch.equal(augment("crop-flip", x, generator=_gen(3)), crop_flip(x, padding=4, generator=_gen(3)))
    with pytest.raises(AdvlabError, match=r"^unknown augmentation 'cutout'; choose one of: none, crop-flip$"):
        augment("cutout", x, generator=_gen(0))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(AdvlabError, match="N, C, H, W"):
        crop_flip(torch.rand(3, 8, 8), generator=_gen(0))
    for padding in (-1, 1.5, True):
        with pytest.raises(AdvlabError, match="padding"):
            crop_flip(torch.rand(2, 3, 8, 8), padding=padding, generator=_gen(0))
