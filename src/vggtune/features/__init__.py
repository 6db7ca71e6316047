"""Features: the frozen blocks' outputs, computed once per view and kept. `settings` names the
augmentation and storage a config chooses, `transforms` makes the views, `extract` decodes images
into batches in background threads, `engine` runs the frozen blocks on the fastest runtime the
machine has (PyTorch, OpenVINO, ONNX Runtime), `cache` stores features under a key that holds everything that
changes them, and `pipeline` fills, derives and opens the sources each training stage reads."""
