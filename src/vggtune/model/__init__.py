"""The model as values: the backbone's architecture (`arch`: blocks, widths, cut points, the Grad-CAM
layer), the heads (`heads`, with the two-class rule), how logits become probabilities (`policy`), the
pretrained weights and their preprocessing (`weights`, `formats`), what a trained classifier is
(`spec`, model.json) and the network itself (`classifier`), with where it runs (`runtime`) and its
int8 frozen blocks (`quantize`)."""
