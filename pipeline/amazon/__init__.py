"""An MMRec-format dataset built from the public raw Amazon review files.

- `spec`: the registry entry of an `amazon` source;
- `reviews`: reading the reviews (2014 and 2018 formats);
- `interactions`: k-core, re-indexing and the per-user split;
- `metadata`: the item sentences for the text features;
- `images`: the CNN image features of the public binary file;
- `build`: the whole build into a validated dataset folder.
"""
