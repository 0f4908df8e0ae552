"""``python -m analysis binding``: does a model bind attributes to the right garment or object?

- :mod:`analysis.binding.pairs`: minimal pairs drawn with the ToyPEDES generator (an identity and
  its twin that differs in the probed binding only), rendered with the same view and seeds;
- :mod:`analysis.binding.texts`: the captions of a pair (the generator's, or a fixed template);
- :mod:`analysis.binding.scoring`: how often the right image (caption) outranks its twin;
- :mod:`analysis.binding.attributes`: per-attribute accuracy of the top-1 retrieval on a data root;
- :mod:`analysis.binding.output`: the CSV tables, the README and the figure;
- :mod:`analysis.binding.cli`: the command's options and body.

This file imports nothing heavy, so ``python -m analysis --help`` stays fast.
"""
