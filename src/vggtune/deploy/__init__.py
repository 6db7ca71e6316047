"""Using a finished run: `predict` (a run folder in, labels and probabilities out), `inputs` (the files
a user names, labelled images to judge it on), `gradcam` (where the network looked), `exporting`
(the classifier as ONNX, OpenVINO IR or TFLite, parity-checked) and the HTTP service (`service` for the model and its
batching and tokens, `webapp` for the routes and the server)."""
