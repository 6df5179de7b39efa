"""Zero-shot/retrieval metric pieces shared by flip_t5x.eval and the seqio (t5x.eval) path."""
import numpy as np
import pytest

from flip_t5x.evaluation import metrics
from flip_t5x.evaluation import retrieval
from flip_t5x.evaluation import scoring
from flip_t5x.evaluation import zeroshot


def _unit(rng, *shape):
  return scoring.l2_normalize(rng.randn(*shape))


def test_labeled_prompts_match_class_major_prompts_in_any_order():
  rng = np.random.RandomState(0)
  prompts = rng.randn(5 * 3, 8)  # 5 classes x 3 templates, class-major
  labels = np.repeat(np.arange(5), 3)
  expected = zeroshot.class_embeddings_from_prompts(prompts, 5)
  perm = rng.permutation(len(labels))
  got = zeroshot.class_embeddings_from_labeled_prompts(prompts[perm], labels[perm], 5)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="no prompt embeddings for classes"):
    zeroshot.class_embeddings_from_labeled_prompts(prompts[:3], labels[:3], 5)


def test_accumulator_streams_like_one_shot_accuracy():
  rng = np.random.RandomState(1)
  classes, images = _unit(rng, 7, 8), rng.randn(23, 8)
  labels = rng.randint(0, 7, size=23)
  acc = zeroshot.ZeroShotAccumulator(classes)
  for s in range(0, 23, 5):
    acc.update(images[s:s + 5], labels[s:s + 5])
  result = acc.result()
  expected = zeroshot.zeroshot_accuracy(images, classes, labels)
  assert result["top1"] == pytest.approx(expected["top1"])
  assert result["top5"] == pytest.approx(expected["top5"])
  assert (result["num_examples"], result["num_classes"]) == (23, 7)
  # Per class, brute force: which images' nearest class is their own.
  hit = np.argmax(images @ classes.T, axis=1) == labels
  per_class = {c: (100.0 * hit[labels == c].mean(), int((labels == c).sum()))
               for c in np.unique(labels)}
  expected_worst = sorted(per_class, key=lambda c: (per_class[c][0], c))[:5]
  worst = acc.worst_classes(5)
  assert [w[0] for w in worst] == expected_worst
  for c, top1, n in worst:
    assert (top1, n) == (pytest.approx(per_class[c][0]), per_class[c][1])
  assert len(acc.worst_classes(100)) == len(per_class)  # classes without images are left out


def test_seqio_zeroshot_metric_scores_image_rows_against_prompt_rows():
  rng = np.random.RandomState(2)
  c, t, n, e = 6, 2, 9, 8
  prompt_text = rng.randn(c * t, e)
  image_emb = rng.randn(n, e)
  labels = rng.randint(0, c, size=n)
  # Rows as the seqio task lists them: prompts first (text half used), then images.
  text_col = np.concatenate([prompt_text, np.zeros((n, e))])
  image_col = np.concatenate([np.zeros((c * t, e)), image_emb])
  examples = ([{"label": i // t, "is_prompt": True} for i in range(c * t)] +
              [{"label": l, "is_prompt": False} for l in labels])
  targets = [metrics.zeroshot_postprocess("", example=ex, is_target=True) for ex in examples]
  assert metrics.zeroshot_postprocess("text", example=examples[0]) == "text"
  got = metrics.zeroshot_metric(
      targets, [""] * len(targets), {"image_embedding": image_col, "text_embedding": text_col})
  class_emb = zeroshot.class_embeddings_from_prompts(prompt_text, c)
  expected = zeroshot.zeroshot_accuracy(image_emb, class_emb, labels)
  assert got["top1"] == pytest.approx(expected["top1"])
  assert got["top5"] == pytest.approx(expected["top5"])
  assert got["num_examples"] == n and got["num_classes"] == c
  with pytest.raises(ValueError, match="no prompt rows"):
    metrics.zeroshot_metric(targets[c * t:], [], {"image_embedding": image_emb,
                                                        "text_embedding": image_emb})


def test_seqio_retrieval_metric():
  rng = np.random.RandomState(3)
  img = rng.randn(12, 8)
  txt = img + 0.01 * rng.randn(12, 8)  # every caption closest to its own image
  got = metrics.retrieval_metric([""] * 12, [""] * 12,
                                       {"image_embedding": img, "text_embedding": txt})
  assert got["image_to_text/recall@1"] == 100.0 and got["text_to_image/recall@1"] == 100.0
  assert got["num_examples"] == 12


def bruteforce_recall(image_emb, text_emb, ks=(1, 5, 10)):
  """Recall@k by counting, pair by pair: query i hits when fewer than k candidates score above
  its own match (cosine similarity, plain loops; independent of flip_t5x.evaluation)."""
  def unit(x):
    return [np.asarray(v, np.float64) / np.sqrt(np.dot(v, v)) for v in x]

  images, texts = unit(image_emb), unit(text_emb)
  out = {}
  for name, queries, candidates in (("image_to_text", images, texts),
                                    ("text_to_image", texts, images)):
    ranks = []
    for i, q in enumerate(queries):
      scores = [float(np.dot(q, c)) for c in candidates]
      ranks.append(sum(s > scores[i] for s in scores))
    for k in ks:
      out[f"{name}/recall@{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
  return out


def test_retrieval_recall_matches_bruteforce_both_directions():
  rng = np.random.RandomState(4)
  n, d = 40, 6
  images = rng.randn(n, d)
  texts = images + 1.2 * rng.randn(n, d)  # noisy matches: recalls strictly between 0 and 100
  got = retrieval.retrieval_recall(images, texts)
  want = bruteforce_recall(images, texts)
  assert sorted(got) == sorted(want) and len(got) == 6
  for key, value in want.items():
    assert got[key] == pytest.approx(value), key
  assert 0 < want["image_to_text/recall@1"] < want["image_to_text/recall@10"] < 100
  assert want["image_to_text/recall@5"] != want["text_to_image/recall@5"]  # not symmetric
