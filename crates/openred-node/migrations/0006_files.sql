-- The file sharing module.

-- Files this node shares: the canonical path and the identity (device,
-- inode, size, modification time) recorded at share time, so that a file
-- swapped or edited since is refused at serve time; the BLAKE3 hash the
-- receiver checks; expiry, download limit and the count of completed
-- downloads.
CREATE TABLE file_shares (
    file_id BLOB PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    path BLOB NOT NULL,
    size INTEGER NOT NULL,
    blake3 BLOB NOT NULL,
    chunk_size INTEGER NOT NULL,
    device INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    max_downloads INTEGER,
    downloads INTEGER NOT NULL DEFAULT 0,
    revoked_at INTEGER
);

-- The peers allowed to fetch each share.
CREATE TABLE file_share_peers (
    file_id BLOB NOT NULL,
    peer BLOB NOT NULL,
    PRIMARY KEY (file_id, peer)
);

-- Links (file_url capabilities) handed to peers: only the capability's
-- hash is stored; the link secret that keys the chunks is sealed under the
-- node's storage key. A link counts as one completed download at most.
CREATE TABLE file_links (
    link_hash BLOB PRIMARY KEY NOT NULL,
    file_id BLOB NOT NULL,
    peer BLOB NOT NULL,
    suite INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    secret BLOB NOT NULL,
    completed_at INTEGER
);
CREATE INDEX file_links_expiry ON file_links (expires_at);

-- Downloads on the receiving side: where the file goes and what it must
-- hash to, so that an interrupted download resumes after a restart.
CREATE TABLE file_downloads (
    peer BLOB NOT NULL,
    file_id BLOB NOT NULL,
    transfer_id BLOB NOT NULL,
    name TEXT NOT NULL,
    out_path BLOB NOT NULL,
    size INTEGER NOT NULL,
    blake3 BLOB NOT NULL,
    chunk_size INTEGER NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (peer, file_id)
);
