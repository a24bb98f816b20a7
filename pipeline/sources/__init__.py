"""Where datasets come from: the registry of sources, their transfer, checksums and messages.

- `registry`: which sources exist and which keys each registry entry needs;
- `transfer`: Google Drive folders, mirror URLs and archives, and finding a dataset's files in them;
- `checksums`: the sha256 store `data/checksums.json`;
- `messages`: what the user is told when a fetch fails and how to continue by hand;
- `fetch`: the verified, validated, atomic fetch of one dataset.
"""
