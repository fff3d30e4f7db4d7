"""History: each change to one resource's spec document and lock entry, read from git alone.

changes.py holds the pure part (diffs, evidence, lineage, name matching) over documents
already read; git_reader.py walks the commits and reads them (GitHistory, history, snapshot).
"""
