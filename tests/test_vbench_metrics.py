"""VBench-Long quality metrics (miga.evaluation): formulas on hand-made inputs, clip splitting, extractors."""

import json

import numpy as np
import pytest
import torch

from miga.errors import MigaError
from miga.evaluation import (aggregate, clip_length, consistency, evaluate_video, frame_consistency, fuse,
                             motion_smoothness, normalized, overall, split_clips, temporal_flicker)
from miga.evaluation.features import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ProxyFeatures, clip_pixels,
                                      dino_pixels, load_clip, load_dino)
from miga.evaluation.interpolation import FlowMidpoint, LinearBlend, amt_interpolator
from miga.evaluation.latents import LatentWriter, latent_consistency, read_latents


def const(values, h=16, w=16):
    """Frames of one grey value each."""
    return np.stack([np.full((h, w, 3), v, np.uint8) for v in values])


def texture(seed, h=48, w=48):
    """A smooth random RGB texture (something optical flow can track)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 6.0
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(4):
            fx, fy, ph = rng.uniform(0.3, 1.2, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] += np.sin(fx * x + fy * y + ph)
    return np.clip(128 + 30 * img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# temporal flicker


def test_temporal_flicker_formula():
    assert temporal_flicker(const([77] * 10)) == 1.0
    assert temporal_flicker(const([0, 255] * 5)) == 0.0
    assert temporal_flicker(const([0, 10, 30])) == pytest.approx((255 - 15) / 255, abs=1e-12)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 8, 12, 3), dtype=np.uint8)
    expected = (255 - np.mean([np.mean(np.abs(frames[i + 1].astype(float) - frames[i])) for i in range(5)])) / 255
    assert temporal_flicker(frames) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        temporal_flicker(const([1]))


# ----------------------------------------------------------------------------------------------------
# subject / background consistency


def test_consistency_formula():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(1, 8))
    assert consistency(np.repeat(f, 5, axis=0)) == pytest.approx(1.0, abs=1e-12)
    assert consistency(np.repeat(f, 5, axis=0) * np.arange(1, 6)[:, None]) == pytest.approx(1.0, abs=1e-12)
    # f1 = -f0: both cosines are -1 and clamp at 0
    assert consistency(np.array([[1.0, 0.0], [-1.0, 0.0]])) == 0.0
    # by hand: cos(f1, f0) = 0, cos(f2, f0) = cos(f2, f1) = 1/sqrt 2
    fc = frame_consistency(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    np.testing.assert_allclose(fc.to_first, [0.0, 2 ** -0.5])
    np.testing.assert_allclose(fc.to_previous, [0.0, 2 ** -0.5])
    assert fc.score == pytest.approx((0 + 2 ** -0.5) / 2)
    # a negative cosine to the first frame counts as 0, the positive one to the previous frame counts
    fc = frame_consistency(np.array([[1.0, 0.0], [0.6, 0.8], [-0.6, 0.8]]))
    assert fc.to_first.tolist() == pytest.approx([0.6, 0.0]) and fc.to_previous.tolist() == pytest.approx([0.6, 0.28])
    assert fc.score == pytest.approx(((0.6 + 0.6) / 2 + (0.0 + 0.28) / 2) / 2)


def test_fuse_and_overall():
    assert fuse(0.9, None) == 0.9
    assert fuse(0.9, 0.5) == pytest.approx(0.7)
    assert fuse(0.9, 0.5, mapping=lambda v: 0.0) == 0.9
    assert fuse(0.9, 0.5, mapping=lambda v: 1.0) == pytest.approx(0.95)
    scores = {"temporal_flicker": 1.0, "motion_smoothness": 0.9975, "subject_consistency": 0.1462,
              "background_consistency": 0.2615}
    raw, norm = overall(scores)
    assert raw == pytest.approx((1.0 + 0.9975 + 0.1462 + 0.2615) / 4)
    assert norm == pytest.approx(0.5)  # 1, 1, 0, 0
    assert normalized("temporal_flicker", 0.6293) == 0.0 and normalized("motion_smoothness", 1.0) > 1.0


# ----------------------------------------------------------------------------------------------------
# clips


def test_clip_splitting():
    assert clip_length(8) == 16 and clip_length(24) == 48 and clip_length(23.976) == 46 and clip_length(12.5) == 24
    assert clip_length(1) == 3 and clip_length(0.5) == 3
    clips = split_clips(100, clip_length(8))
    assert len(clips) == 7 and sum(not c.back_padded for c in clips) == 6
    assert [(c.start, c.stop) for c in clips[:6]] == [(16 * k, 16 * k + 16) for k in range(6)]
    assert (clips[-1].start, clips[-1].stop, clips[-1].back_padded, clips[-1].frames) == (84, 100, True, 16)
    assert [(c.start, c.stop, c.back_padded) for c in split_clips(32, 16)] == [(0, 16, False), (16, 32, False)]
    assert [(c.start, c.stop) for c in split_clips(16, 16)] == [(0, 16)]
    assert [(c.start, c.stop, c.back_padded) for c in split_clips(10, 16)] == [(0, 10, False)]  # shorter: whole
    assert [(c.start, c.stop) for c in split_clips(17, 16)] == [(0, 16), (1, 17)]


# ----------------------------------------------------------------------------------------------------
# motion smoothness


def with_predicted_odds(evens, interpolate, last_odd=None):
    """A video whose odd frames are exactly what ``interpolate`` predicts from its even frames."""
    frames = []
    for k in range(len(evens) - 1):
        frames += [evens[k], interpolate(evens[k], evens[k + 1])]
    frames.append(evens[-1])
    if last_odd is not None:
        frames.append(last_odd)
    return np.stack(frames)


def test_motion_smoothness_protocol():
    blend = LinearBlend()
    ramp = const([0, 10, 20, 30, 40, 50, 60])  # a linear ramp: the blend reproduces the odd frames
    assert motion_smoothness(ramp, blend) == 1.0
    # an unmatched last odd frame is ignored
    assert motion_smoothness(np.concatenate([ramp, const([255])]), blend) == 1.0
    # every odd frame 6 grey levels off the prediction
    off = ramp.copy()
    off[1::2] += 6
    assert motion_smoothness(off, blend) == pytest.approx(1 - 6 / 255)
    # the flow interpolator: a video it reproduces exactly scores exactly 1
    flow = FlowMidpoint()
    evens = [np.roll(texture(2), 3 * k, axis=1) for k in range(4)]
    assert motion_smoothness(with_predicted_odds(evens, flow, last_odd=texture(3)), flow) == 1.0
    with pytest.raises(ValueError):
        motion_smoothness(ramp[:2], blend)


def test_flow_interpolator_follows_motion():
    """On a texture sliding 4 px per frame, the flow proxy predicts the odd frames far better than a blend."""
    base = texture(4, 48, 64)
    frames = np.stack([np.roll(base, 4 * t, axis=1) for t in range(9)])
    flow, blend = motion_smoothness(frames, FlowMidpoint()), motion_smoothness(frames, LinearBlend())
    assert flow > 0.995 and (1 - flow) < (1 - blend) / 4, (flow, blend)
    assert FlowMidpoint.proxy and "proxy" in FlowMidpoint.name


def test_amt_needs_its_weights_file(tmp_path):  # the rest of AMT-S: tests/test_amt.py
    with pytest.raises(MigaError, match="no such file; get amt-s.pth with: hf download lalala125/AMT"):
        amt_interpolator(str(tmp_path / "amt-s.pth"))


# ----------------------------------------------------------------------------------------------------
# one video, many videos


class Stub:
    """Features: the frame's mean grey value and 1."""

    name, proxy = "stub", True

    def __call__(self, frames):
        return np.stack([frames.mean(axis=(1, 2, 3)) - 100.0, np.ones(len(frames))], 1)


def test_evaluate_video_and_aggregate():
    rng = np.random.default_rng(5)
    frames = np.clip(rng.normal(120, 3, (40, 8, 8, 3)) + np.arange(40)[:, None, None, None], 0, 255).astype(np.uint8)
    r = evaluate_video(frames, 8.0, Stub(), Stub(), LinearBlend())
    assert r["frames"] == 40 and r["clip_length"] == 16
    assert [(c["start"], c["stop"], c["back_padded"]) for c in r["clips"]] == [(0, 16, False), (16, 32, False),
                                                                              (24, 40, True)]
    for c in r["clips"]:
        clip = frames[c["start"]:c["stop"]]
        assert c["temporal_flicker"] == pytest.approx(temporal_flicker(clip), abs=1e-12)
        assert c["motion_smoothness"] == pytest.approx(motion_smoothness(clip, LinearBlend()), abs=1e-12)
        assert c["subject_consistency"] == pytest.approx(consistency(Stub()(clip)), abs=1e-12)
    for d in ("temporal_flicker", "motion_smoothness", "subject_consistency", "background_consistency"):
        assert r[d] == pytest.approx(np.mean([c[d] for c in r["clips"]]))
        assert 0 <= r[d] <= 1
    modes = r["subject_consistency_modes"]
    assert modes["clip2clip"] == pytest.approx(consistency(Stub()(frames[[0, 16, 24]])))
    assert modes["fused"] == pytest.approx((modes["inclip"] + modes["clip2clip"]) / 2)
    assert modes["whole_video"] == pytest.approx(consistency(Stub()(frames)))
    assert len(r["per_frame"]["subject_to_first"]) == 39 and len(r["per_frame"]["frame_difference"]) == 39
    assert r["overall"] == pytest.approx(np.mean([r[d] for d in ("temporal_flicker", "motion_smoothness",
                                                                 "subject_consistency", "background_consistency")]))
    json.dumps(r)  # JSON-ready
    short = evaluate_video(frames[:10], 8.0, Stub(), Stub(), LinearBlend())
    assert len(short["clips"]) == 1 and short["subject_consistency_modes"]["clip2clip"] is None
    assert short["subject_consistency_modes"]["fused"] == short["subject_consistency"]
    both = aggregate([r, short])
    assert both["temporal_flicker"] == pytest.approx((r["temporal_flicker"] + short["temporal_flicker"]) / 2)
    assert both["subject_consistency_modes"]["clip2clip"] == modes["clip2clip"]  # only r has one


# ----------------------------------------------------------------------------------------------------
# extractors


def test_preprocessing_follows_vbench():
    frames = const([51, 51], h=32, w=48)
    d = dino_pixels(frames)
    assert d.shape == (2, 3, 224, 336)
    np.testing.assert_allclose(d[0, :, 0, 0].numpy(), (0.2 - np.array(IMAGENET_MEAN)) / IMAGENET_STD, rtol=1e-5)
    c = clip_pixels(frames)
    assert c.shape == (2, 3, 224, 224)
    np.testing.assert_allclose(c[0, :, 5, 7].numpy(), (0.2 - np.array(CLIP_MEAN)) / CLIP_STD, rtol=1e-5)
    tall = clip_pixels(np.zeros((1, 50, 30, 3), np.uint8))
    assert tall.shape == (1, 3, 224, 224)


def test_proxy_features():
    sc, bc = ProxyFeatures("dino"), ProxyFeatures("clip")
    assert sc.proxy and bc.proxy and "proxy" in sc.name and "proxy" in bc.name
    a, b = texture(6), texture(7)
    frames = np.stack([a, a, b])
    f = sc(frames)
    assert f.shape == (3, 320) and np.array_equal(f, sc(frames))  # deterministic
    assert np.linalg.norm(f, axis=1) == pytest.approx([1, 1, 1])
    assert consistency(f[:2]) == pytest.approx(1.0)
    assert consistency(bc(frames[[0, 2]])) < 0.9
    shifted = np.stack([a, np.roll(a, 2, axis=1), b])
    fs = sc(shifted)
    assert fs[0] @ fs[1] > fs[0] @ fs[2]  # a small shift is closer than another texture


def tiny_models(root):
    import transformers as tf

    torch.manual_seed(0)
    vit = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=224)
    tf.ViTModel(tf.ViTConfig(patch_size=16, **vit), add_pooling_layer=False).save_pretrained(root / "dino")
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50000,
                max_position_embeddings=16)
    clip = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=dict(patch_size=32, **vit), projection_dim=16))
    clip.save_pretrained(root / "clip")
    tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(patch_size=32, projection_dim=16, **vit)).save_pretrained(
        root / "clip-vision")
    return vit, clip


def test_transformers_extractors(tmp_path):
    _, clip = tiny_models(tmp_path)
    frames = np.random.default_rng(8).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    dino = load_dino(str(tmp_path / "dino"))
    assert not dino.proxy and dino(frames).shape == (3, 32)
    c = load_clip(str(tmp_path / "clip"))
    with torch.no_grad():
        ref = clip.visual_projection(clip.vision_model(pixel_values=clip_pixels(frames)).pooler_output)
    np.testing.assert_allclose(c(frames), ref.double().numpy(), atol=1e-6)
    assert not c.proxy
    vision = load_clip(str(tmp_path / "clip-vision" / "model.safetensors"))  # a weight file in its folder
    assert vision(frames).shape == (3, 16)
    with pytest.raises(MigaError, match="model_type 'vit'"):
        load_clip(str(tmp_path / "dino"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MigaError, match=r"lacks config\.json and model\.safetensors"):
        load_dino(str(tmp_path / "empty"))
    with pytest.raises(MigaError, match="no such file"):
        load_dino(str(tmp_path / "missing"))
    (tmp_path / "dino_vitbase16_pretrain.pth").write_bytes(b"")
    with pytest.raises(MigaError, match="is not supported"):
        load_dino(str(tmp_path / "dino_vitbase16_pretrain.pth"))


# ----------------------------------------------------------------------------------------------------
# latents


def test_latent_consistency_and_file(tmp_path):
    same = torch.randn(1, 4, 6, 6).repeat(8, 1, 1, 1)
    lc = latent_consistency(same, chunk=2, refs=1)
    assert lc["to_first"] == pytest.approx([1.0] * 7) and lc["to_previous"] == pytest.approx([1.0] * 7)
    assert [c["latent"] for c in lc["chunks"]] == [2, 4, 6] and lc["mean_chunk_score"] == pytest.approx(1.0)
    flipped = same.clone()
    flipped[4:] *= -1
    lc = latent_consistency(flipped, chunk=2, refs=1)
    assert lc["to_previous"][3] == pytest.approx(-1.0) and lc["to_first"][-1] == pytest.approx(-1.0)
    assert [c["score"] for c in lc["chunks"]] == pytest.approx([1.0, -1.0, 1.0])

    path = str(tmp_path / "l.safetensors")
    latents = torch.randn(5, 4, 3, 2)
    writer = LatentWriter(path, 5, (4, 3, 2), {"frames": 5, "chunk": 2, "method": "miga"})
    for x in latents:
        assert not (tmp_path / "l.safetensors").exists()
        writer.write(x)
    writer.close()
    back, meta = read_latents(path)
    assert torch.equal(back, latents) and meta == {"frames": 5, "chunk": 2, "method": "miga"}
    short = LatentWriter(str(tmp_path / "s.safetensors"), 3, (4, 3, 2), {})
    short.write(latents[0])
    with pytest.raises(ValueError, match="1 of 3"):
        short.close()
    assert not (tmp_path / "s.safetensors").exists() and (tmp_path / "s.safetensors.partial").exists()
    (tmp_path / "bad.safetensors").write_text("nope")
    with pytest.raises(MigaError, match="cannot read latents"):
        read_latents(str(tmp_path / "bad.safetensors"))


def test_missing_opencv_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)  # "import cv2" raises ImportError
    with pytest.raises(MigaError, match=r'pip install "\.\[eval\]" in the miga checkout'):
        FlowMidpoint()
