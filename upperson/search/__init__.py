"""Galleries of any size: index folders of image features, and exact search over them.

``store``: the folder format (checksummed, memory-mapped segments and an atomic manifest);
``entries``: the gallery's entry tables (an update appends one);
``build``: indexing a folder tree or a list of files, incrementally and resumably;
``engine``: exact top-k with one tie rule (brute force with torch, or FAISS's flat index);
``benchmark``, ``filebench``: the measurements of ``python -m upperson benchmark --search / --index-files``.
"""
