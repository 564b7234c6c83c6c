"""The task-level runtime: what an encoder artifact's outputs mean, read from the
:class:`llmc.spec.task.TaskSpec` its ``model.onnx`` carries (``llmc.task`` metadata).

``llmc.load(dir)`` returns a runner with ``embed``, ``classify``, ``rerank``, ``extract``,
``answer`` and ``fill_mask`` (:class:`llmc.tasks.methods.TaskMethods`); ``llmc predict`` prints
their results.

- ``model``: the artifact's spec, tokenizer and run, and the one-line refusals;
- ``text``: tokenizing with the artifact's tokenizer (truncation, pairs, question windows);
- ``batching``: texts run in batches of similar length, results back in input order;
- ``scores``: softmax / sigmoid / raw scores of logits as the spec's problem type says;
- ``embed``, ``classify``, ``extract``, ``answer``, ``fill``: one task's reading each (``classify``
  has ``rerank``);
- ``methods``: the runner's methods on top of them; ``predict``: what ``llmc predict`` reads.
"""
