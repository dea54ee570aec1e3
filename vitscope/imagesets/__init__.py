"""Image sets: folders of class sub-folders, a flat folder with a CSV of labels (`folders`), and the embedded demo set
(`demo`); decoding and the model's own preprocessing."""
