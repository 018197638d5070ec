"""encoding.py: blocks, parts, seal, records, references, metadata, coercion; no server."""

import math

import numpy as np
import pytest
from conftest import DTYPES, stored

from databus import _encoding as enc
from databus._errors import CorruptEntry, DtypeError, MetadataError, ShapeError

SHAPES = [(), (3,), (4, 5), (2, 3, 4)]


def random_block(dtype, shape, n, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=n * math.prod(shape) * np.dtype(dtype).itemsize, dtype=np.uint8)
    if np.dtype(dtype).kind == "b":
        raw = raw % 2
    return raw.view(dtype).reshape((n, *shape))


def decode(desc, entries):
    blocks = [b for b in enc.decode_entries(desc, "k", stored(entries)) if not isinstance(b, int)]
    return np.concatenate([b.data for b in blocks]) if blocks else None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_dtype_and_shape_round_trips_bit_exact(dtype, shape):
    desc = enc.Descriptor.create("c", dtype, shape)
    block = random_block(dtype, shape, 7)
    entries = list(enc.block_entries(desc, 100, block))
    assert entries[0][0] == b"100-1"
    out = decode(desc, entries)
    assert out.dtype == np.dtype(dtype) and out.shape == block.shape
    assert out.tobytes() == block.tobytes()


def test_blocks_are_cut_at_entry_bytes_and_ids_count_points():
    desc = enc.Descriptor.create(
        "c",
        "float64",
        (),
    )
    block = np.arange(3 * (enc.ENTRY_BYTES // 8) + 5, dtype="f8")
    entries = list(enc.block_entries(desc, 10, block))
    per = enc.ENTRY_BYTES // 8
    assert [e[0] for e in entries] == [
        b"10-1",
        b"%d-1" % (10 + per),
        b"%d-1" % (10 + 2 * per),
        b"%d-1" % (10 + 3 * per),
    ]
    assert np.array_equal(decode(desc, entries), block)


def test_a_2mib_frame_is_split_so_no_entry_crosses_the_2mib_size_class():
    desc = enc.Descriptor.create("img", "uint16", (1024, 1024))
    frames = random_block("uint16", (1024, 1024), 2)
    entries = list(enc.block_entries(desc, 0, frames))
    assert [e[0] for e in entries] == [b"0-1", b"0-2", b"1-1", b"1-2"]
    assert max(len(e[1][b"d"]) for e in entries) <= enc.ENTRY_BYTES < 2**21
    assert desc.parts == 2
    assert np.array_equal(decode(desc, entries), frames)


def test_split_points_in_a_row_can_decode_as_one_block_and_a_gap_cuts_the_row():
    desc = enc.Descriptor.create("img", "uint16", (1024, 1024))
    frames = random_block("uint16", (1024, 1024), 4)
    entries = stored(enc.block_entries(desc, 0, frames[:2]))
    entries += stored([enc.gap_entry(2, 3, enc.GAP_DROPPED)])
    entries += stored(enc.block_entries(desc, 3, frames[3:]))
    entries += stored([(enc.SEAL_ID, enc.seal_fields(4))])
    each = list(enc.decode_entries(desc, "k", entries))
    assert [(o.first, o.count) for o in each if isinstance(o, enc.Block)] == [
        (0, 1),
        (1, 1),
        (3, 1),
    ]
    out = list(enc.decode_entries(desc, "k", entries, joined=True))
    assert [type(o).__name__ for o in out] == ["Block", "Gap", "Block", "int"]
    assert (out[0].first, out[0].count, out[2].first, out[2].count) == (0, 2, 3, 1)
    assert np.array_equal(out[0].data, frames[:2]) and np.array_equal(out[2].data, frames[3:])
    assert out[1] == enc.Gap(2, 1, enc.GAP_DROPPED) and out[3] == 4


def test_large_payloads_are_sent_without_a_copy():
    desc = enc.Descriptor.create("img", "uint16", (512, 512))
    frame = random_block("uint16", (512, 512), 1)
    ((_, fields),) = enc.block_entries(desc, 0, frame)
    assert isinstance(fields[b"d"], memoryview) and np.shares_memory(
        np.asarray(fields[b"d"]), frame
    )


def test_an_incomplete_split_point_is_held_back_and_out_of_order_parts_are_corrupt():
    desc = enc.Descriptor.create("img", "uint8", (3 * enc.ENTRY_BYTES,))
    frame = random_block("uint8", desc.shape, 1)
    entries = stored(enc.block_entries(desc, 0, frame))
    assert list(enc.decode_entries(desc, "k", entries[:2])) == []
    with pytest.raises(CorruptEntry, match="out of sequence"):
        list(enc.decode_entries(desc, "k", [entries[0], entries[2]]))


def test_seal_has_the_largest_id_and_yields_the_total():
    assert enc.is_seal(enc.SEAL_ID) and enc.parse_id(enc.SEAL_ID) == (2**64 - 1, 2**64 - 1)
    desc = enc.Descriptor.create("c", "int32")
    out = list(enc.decode_entries(desc, "k", [(enc.SEAL_ID, {b"end": b"12"})]))
    assert out == [12]


def test_records_and_file_references_round_trip():
    desc = enc.Descriptor.create("log", None, kind="json")
    records = [{"a": 1, "b": [1.5, "x"]}, "text", None, 3]
    eid, fields = enc.record_entry(5, [enc.pack_record(r, "log") for r in records])
    (block,) = enc.decode_entries(desc, "k", stored([(eid, fields)]))
    assert (block.first, block.data, block.count) == (5, records, 4)
    many = [enc.pack_record(i, "log") for i in range(70_000)]
    (block,) = enc.decode_entries(desc, "k", stored([enc.record_entry(0, many)]))
    assert block.data == list(range(70_000))

    rdesc = enc.Descriptor.create("det", "uint16", (4, 4), kind="ref")
    ref = enc.FileRef("/data/det.h5", "/entry/data", 10, 20)
    (block,) = enc.decode_entries(rdesc, "k", stored([enc.ref_entry(3, ref)]))
    assert (block.first, block.data, block.count) == (3, [ref], 10)


@pytest.mark.parametrize(
    "fields",
    [{b"d": b"\x00" * 7, b"n": b"1"}, {b"n": b"1"}, {b"d": b"\x00" * 8, b"n": b"x"}, {}],
)
def test_corrupt_entries_name_key_and_id(fields):
    desc = enc.Descriptor.create("c", "float64")
    with pytest.raises(CorruptEntry, match="key entry 4-1") as info:
        list(enc.decode_entries(desc, "key", [(b"4-1", fields)]))
    assert info.value.entry_id == "4-1" and info.value.key == "key"


def test_gap_markers_decode_and_a_bad_one_is_a_corrupt_entry():
    desc = enc.Descriptor.create("c", "float64")
    (gap,) = enc.decode_entries(desc, "k", stored([enc.gap_entry(2, 5, enc.GAP_DROPPED)]))
    assert gap == enc.Gap(2, 3, "dropped")
    with pytest.raises(CorruptEntry, match=r"k entry 5-0: .*gap marker from 7 to 5"):
        list(enc.decode_entries(desc, "k", [(b"5-0", {b"gap": b"7", b"why": b"dropped"})]))


def test_metadata_round_trips_numpy_and_names_what_it_cannot_store():
    info = {
        "title": "ascan",
        "npoints": np.int64(10),
        "pos": np.arange(3.0),
        "scalar": np.array(2.5, np.float32),
        "grid": np.arange(6, dtype=">i2").reshape(2, 3).T,
        "nested": {"k": [1, (2, 3)]},
    }
    back = enc.unpack_meta(enc.pack_meta(info))
    assert back["scalar"].shape == () and back["scalar"].dtype == np.float32  # 0-d stays 0-d
    assert np.array_equal(back["grid"], info["grid"]) and back["grid"].shape == (3, 2)
    assert back["npoints"] == 10 and isinstance(back["npoints"], int)
    assert np.array_equal(back["pos"], np.arange(3.0)) and back["nested"] == {"k": [1, [2, 3]]}
    with pytest.raises(MetadataError, match=r"scan info\['nested'\]\['bad'\] = <object"):
        enc.pack_meta({"nested": {"bad": object()}}, what="scan info")


class TestCoerce:
    f8 = enc.Descriptor.create("x", "float64")
    i4 = enc.Descriptor.create("n", "int32")
    img = enc.Descriptor.create("img", "uint16", (1024, 1024))

    def test_one_point_or_a_block(self):
        assert enc.coerce(self.f8, 1.5).shape == (1,)
        assert enc.coerce(self.f8, [1, 2, 3]).dtype == np.float64
        assert enc.coerce(self.img, np.zeros((1024, 1024), "u2")).shape == (1, 1024, 1024)
        assert enc.coerce(self.img, np.zeros((3, 1024, 1024), "u2")).shape == (3, 1024, 1024)

    def test_a_float_that_would_truncate_is_refused_but_whole_values_pass(self):
        with pytest.raises(
            DtypeError, match=r"channel 'n' holds int32 points: 3\.5 .*would not survive"
        ):
            enc.coerce(self.i4, 3.5)
        assert enc.coerce(self.i4, 3.0).tolist() == [3]
        with pytest.raises(DtypeError, match="nan"):
            enc.coerce(self.i4, float("nan"))
        with pytest.raises(DtypeError, match="300"):
            enc.coerce(enc.Descriptor.create("b", "uint8"), 300)

    def test_a_float_too_large_for_a_narrower_float_is_refused(self):
        f2 = enc.Descriptor.create("half", "float16")
        with pytest.raises(DtypeError, match=r"'half' holds float16 points: 1e\+300 .*too large"):
            enc.coerce(f2, 1e300)
        assert np.isinf(enc.coerce(f2, np.inf)[0])  # an infinity stays one
        assert enc.coerce(f2, 1000.0)[0] == 1000.0

    def test_nan_and_widening_are_kept(self):
        out = enc.coerce(self.f8, [np.nan, 1])
        assert np.isnan(out[0]) and out[1] == 1
        assert enc.coerce(enc.Descriptor.create("f", "float32"), 0.1).dtype == np.float32

    def test_wrong_frame_shape_says_what_the_channel_takes(self):
        with pytest.raises(ShapeError) as info:
            enc.coerce(self.img, np.zeros((1023, 1024), "u2"))
        message = str(info.value)
        assert "'img'" in message and "(1024, 1024)" in message and "(1023, 1024)" in message
        assert "('n', 1024, 1024)" in message

    def test_none_strings_and_ragged_lists_are_refused(self):
        with pytest.raises(DtypeError, match="got None"):
            enc.coerce(self.f8, None)
        with pytest.raises(DtypeError, match="<U"):
            enc.coerce(self.f8, "1.0")
        with pytest.raises(ShapeError, match="cannot make an array"):
            enc.coerce(self.f8, [[1], [2, 3]])

    def test_no_copy_is_made_that_is_not_needed(self):
        frame = np.zeros((1024, 1024), "u2")
        assert np.shares_memory(enc.coerce(self.img, frame), frame)
        assert not np.shares_memory(enc.coerce(self.img, frame.astype("u1")), frame)


@pytest.mark.parametrize("dtype", ["U4", "O", "M8[s]", [("a", "f8")]])
def test_non_numeric_dtypes_are_refused_with_the_alternative(dtype):
    with pytest.raises(DtypeError, match="kind='json'"):
        enc.Descriptor.create("c", dtype)


def test_descriptor_round_trips():
    desc = enc.Descriptor.create("img", ">u2", (4, 5), unit="ct", lossy=True, attrs={"det": "x"})
    assert enc.Descriptor.from_meta(desc.to_meta()) == desc
    assert desc.dtype == np.dtype("<u2")


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        (enc.FileRef("/d/det.h5", "/entry/data", 2**40 - 10, 2**40), None),
        (enc.FileRef("/d/det.h5", "data", np.int64(3), np.int64(5)), None),
        (enc.FileRef("/d/det.h5", "d", 0, 2**40 + 1), "stop 1099511627777 is over"),
        (enc.FileRef("/d/det.h5", "d", 5, 5 + 2**24), None),
        (enc.FileRef("/d/det.h5", "d", 5, 6 + 2**24), "16777217 frames (5..16777221) are more"),
        (enc.FileRef("./det.h5", "d", 0, 1), "file './det.h5' is not an absolute path"),
        (enc.FileRef("/d/\udcff.h5", "d", 0, 1), "is not valid text (a lone surrogate)"),
        (enc.FileRef("/d/det.h5", "d\x00", 0, 1), "dataset 'd\\x00' contains a NUL"),
        (enc.FileRef("/" + "d" * 4096, "d", 0, 1), "file has 4097 characters, over 4096"),
        (enc.FileRef("/d/det.h5", None, 0, 1), "dataset must be a non-empty string, got None"),
        (enc.FileRef("/d/det.h5", "d", True, 2), "start must be an int, got True"),
    ],
)
def test_file_ref_problem_names_what_is_wrong(ref, problem):
    found = ref.problem()
    assert found is None if problem is None else problem in found


@pytest.mark.parametrize(
    ("packed", "n", "why"),
    [
        (["/d/det.h5", "d", 0, 2**62], 2**62, "stop 4611686018427387904 is over"),
        (["/d/det.h5", "d", 0, 10], 2, "2 points for a reference to frames 0..9"),
        (["det.h5", "d", 0, 2], 2, "file 'det.h5' is not an absolute path"),
        (["/d/det.h5", "d", 5, 2], 2, "FileRef needs 0 <= start < stop, got 5..2"),
    ],
)
def test_an_inconsistent_ref_entry_is_corrupt_and_vouches_for_nothing(packed, n, why):
    desc = enc.Descriptor.create("det", "uint16", (4, 4), kind="ref")
    fields = {b"r": enc.pack_meta(packed), b"n": n}
    with pytest.raises(CorruptEntry, match=r"k entry 3-1: cannot decode") as info:
        list(enc.decode_entries(desc, "k", stored([(b"3-1", fields)])))
    assert why in str(info.value) and info.value.entry_id == "3-1"
    assert enc.points_through(desc, b"3-1", stored([(b"3-1", fields)])[0][1]) == 3
    good = enc.ref_entry(3, enc.FileRef("/d/det.h5", "d", 0, 10))
    assert enc.points_through(desc, *stored([good])[0]) == 13
