"""Offline quality measures of a (pruned) model: no network, built-in held-out data.

- `perplexity`: held-out prose (text);
- `image_qa`: held-out image questions with short answers: answer log-likelihood and exact match;
- `dense_agreement`: how close the pruned model's next-token distributions stay to the dense
  model's on the same inputs (mean KL(dense || pruned), top-1 agreement).
"""

from tampkit.evaluation.agreement import dense_agreement
from tampkit.evaluation.perplexity import perplexity
from tampkit.evaluation.qa import heldout_qa_items, image_qa

__all__ = ["dense_agreement", "heldout_qa_items", "image_qa", "perplexity"]
