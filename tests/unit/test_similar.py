"""Near-duplicate search by multi-index hashing: the pairs every comparison would find, found without
comparing every pair."""
import numpy as np
import pytest

from vggtune.data import similar


def brute_force(hashes, max_distance):
    pairs = set()
    for i in range(len(hashes)):
        distance = np.array([bin(int(hashes[i]) ^ int(h)).count("1") for h in hashes[i + 1:]])
        pairs |= {(i, i + 1 + int(j), int(distance[j])) for j in np.flatnonzero(distance <= max_distance)}
    return pairs


@pytest.mark.parametrize("max_distance", [2, 4, 6])
def test_every_close_pair_is_found_and_no_other(max_distance):
    rng = np.random.default_rng(max_distance)
    base = rng.integers(0, 2**63, 400, dtype=np.uint64)
    flips = [np.uint64(sum(1 << int(b) for b in rng.choice(64, k, replace=False))) for k in rng.integers(1, 9, 400)]
    hashes = np.concatenate([base, base ^ np.array(flips, dtype=np.uint64)])   # planted neighbours at 1-8 bits
    expected = brute_force(hashes, max_distance)
    assert len(expected) > 50
    assert set(similar.close_pairs(hashes, max_distance)) == expected


def test_copies_of_one_hash_are_linked_to_the_first_not_to_each_other():
    hashes = np.array([7, 0xFFFF_FFFF_0000_0000, 7, 7, 7 ^ 1], dtype=np.uint64)
    pairs = similar.close_pairs(hashes, 4)
    assert (0, 2, 0) in pairs and (0, 3, 0) in pairs and (2, 3, 0) not in pairs
    assert (0, 4, 1) in pairs and not any(1 in pair[:2] for pair in pairs)
    assert similar.groups(5, pairs).tolist() == [0, 1, 0, 0, 0]


def test_a_large_bucket_is_compared_in_chunks(monkeypatch):
    """Many hashes sharing every piece but one: more candidate pairs than one chunk holds."""
    monkeypatch.setattr(similar, "CHUNK_PAIRS", 1000)
    hashes = np.arange(300, dtype=np.uint64) << np.uint64(51)        # differ only in the top 13 bits
    assert set(similar.close_pairs(hashes, 4)) == brute_force(hashes, 4)


def test_many_images_that_merely_look_alike_are_not_one_group():
    """A texture or one X-ray layout: 40 hashes a bit apart in a chain form one component, far more than
    copies of one image; it is not forced into one split (it would have emptied the others)."""
    rng = np.random.default_rng(5)
    chain = [np.uint64(rng.integers(0, 2**63))]
    for _ in range(39):
        chain.append(chain[-1] ^ np.uint64(1 << int(rng.integers(0, 64))))
    copies = [np.uint64(12345), np.uint64(12345 ^ 0b101)]
    hashes = np.array(chain + copies, dtype=np.uint64)
    pairs, group = similar.copy_groups(hashes)
    assert len(set(group[:40].tolist())) == 40                 # the chain: no group
    assert group[40] == group[41] and pairs == [(40, 41, 2)]   # the two copies: one group, their pair listed
