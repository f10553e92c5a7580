"""What an experiment is on storage, at the bottom: storage, file layout, typed records,
metric names, errors, the reference's numbers, the reader and the reporter. It imports
no other package of ours, and neither torch nor Ray."""
