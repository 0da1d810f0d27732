"""Realistic student bugs: each is the base plus a small edit, with the rubric group(s)
whose checks must fail. `origin` says where the bug comes from: the course text's four
common errors, the three defects of a published course release, or how students get
this module wrong."""

from __future__ import annotations

from tests.zoo.variants import MEMO, TENSOR, Variant, edit

COURSE = "course text, common error"
RELEASE = "published course release defect"
STUDENTS = "student error"


# Why a bug may cost groups besides its own (docs/rubric.md, rule 5): one defect, its own
# points, except where the other groups' clauses really depend on the broken behaviour.
DECODES = ("memoization is credited only to a cache that decodes correctly (KV-MEMO-1/2), and KV-NI-4 decodes with "
           "the cache a second enable returned: a wrong cached step fails both")
READ_THROUGH_GET = ("what a cache stores is seen only through get and through cached decoding: wrong data stored fails "
                    "every check that reads the cache (get, attention over get, the model's decoding, memoization and "
                    "KV-NI-4, which decode; KV-PERF-1 measures an update whose write it must see land)")
GET_IS_THE_WINDOW = ("the update checks see what update stored only through get, and attention, the model's decoding, "
                     "memoization and KV-NI-4 read the cache through it")
ADVANCE_STUCK = ("with seq_pos stuck at 0 every update overwrites position 0: every check that writes more than one "
                 "position, in every group, finds the cache holding one")
SHARED_STORAGE = ("every check that builds a second cache (a fresh one in the machines, twin caches, a second model's) "
                  "finds the first one's data in it")
NO_FLAG = "without the flag a second enable cannot tell the model is enabled, so it wraps the first patch (KV-NI-4)"

# The groups each bug also costs, measured with `python -m tests.zoo seeds --seeds 5 --profile quick`
# (every bug, the groups that lost points in any seed; docs/zoo.md). A bug not listed here and
# without collateral= of its own may lose points in its expected groups only.
MEASURED_COLLATERAL: dict[str, tuple[str, str]] = {
    "advance_does_nothing": ("attention bounds construction get memoization model non-invasive performance reset shapes update",
                             ADVANCE_STUCK),
    "attends_only_to_itself": ("memoization non-invasive", DECODES),
    "closure_over_loop_variable": ("memoization non-invasive", DECODES),
    "current_token_not_attended": ("memoization non-invasive", DECODES),
    "enable_head_dim_is_embed_dim": ("memoization non-invasive", DECODES),
    "first_token_never_cached": ("memoization non-invasive", DECODES),
    "scale_by_embed_dim": ("memoization non-invasive", DECODES),
    "scale_by_head_dim": ("memoization non-invasive", DECODES),
    "enable_does_not_set_flag": ("non-invasive", NO_FLAG),
    "first_head_everywhere": ("attention get memoization model non-invasive performance", READ_THROUGH_GET),
    "keys_values_swapped_in_update": ("attention get memoization model non-invasive performance", READ_THROUGH_GET),
    "only_first_batch_written": ("attention get performance", READ_THROUGH_GET),
    "update_writes_next_slot": ("attention get memoization model non-invasive", READ_THROUGH_GET),
    "wrong_layer_written": ("attention get memoization model non-invasive", READ_THROUGH_GET),
    "get_returns_values_first": ("attention memoization model non-invasive performance update", GET_IS_THE_WINDOW),
    "get_returns_whole_buffer": ("attention memoization model non-invasive", GET_IS_THE_WINDOW),
    "storage_shared_between_instances": ("advance attention bounds get memoization model non-invasive performance reset "
                                         "shapes update", SHARED_STORAGE),
}


def bug(name: str, groups: str, description: str, *edits: object, origin: str = STUDENTS, collateral: str | None = None,
        **extra: object) -> Variant:
    """`groups` must lose points; `collateral` may too (say why in collateral_why), no other group may.
    collateral=None: the measured collateral of MEASURED_COLLATERAL, else none."""
    if collateral is None:
        collateral, why = MEASURED_COLLATERAL.get(name, ("", ""))
        extra.setdefault("collateral_why", why)
    return Variant(
        name=name,
        kind="bug",
        description=description,
        edits=tuple(edits),  # type: ignore[arg-type]
        expect_fail_groups=frozenset(groups.split()),
        collateral=frozenset(collateral.split()),
        collateral_recorded=True,
        origin=origin,
        **extra,  # type: ignore[arg-type]
    )


# Pieces of the base quoted by several edits.
FULL_CHECK = """        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"Sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")
"""
KEY_CHECK = """        if tuple(key.shape) != expected:
            raise ValueError(f"Key shape {tuple(key.shape)} does not match expected {expected}")
"""
VALUE_CHECK = """        if tuple(value.shape) != expected:
            raise ValueError(f"Value shape {tuple(value.shape)} does not match expected {expected}")
"""
WRITES = """        key_cache.data[:, :, pos : pos + 1, :] = key.data
        value_cache.data[:, :, pos : pos + 1, :] = value.data
"""
GET_SLICES = """        cached_keys = key_cache.data[:, :, :valid_len, :]
        cached_values = value_cache.data[:, :, :valid_len, :]
"""
RESET_BODY = """        self.seq_pos = 0
        for key_cache, value_cache in self.caches:
            key_cache.data.fill(0.0)
            value_cache.data.fill(0.0)
"""
PATCH_LOOP = """    for layer_idx, block in enumerate(model.blocks):
        block._original_attention_forward = block.attention.forward
        block.attention.forward = _make_cached_forward(
            layer_idx, block.attention, block._original_attention_forward, cache
        )
"""
CONCAT = """        all_keys = np.concatenate([past_keys.data, K.data], axis=2)
        all_values = np.concatenate([past_values.data, V.data], axis=2)
"""
RESTORE = """        if hasattr(block, "_original_attention_forward"):
            block.attention.forward = block._original_attention_forward
            del block._original_attention_forward
"""
Q_PROJ = "        Q = attention.q_proj.forward(x).reshape(batch_size, 1, num_heads, head_dim).transpose(1, 2)\n"
FACTORY_HEAD = '''    """Build the cached attention forward for one layer."""

'''

# The published 2025 package's layout: the cache module at tinytorch/generation/kv_cache.py.
# Its known defects are laid out there, so the zoo shows each one graded as that release's
# students hand it in (discovered without flags).
LAYOUT_2025 = dict(
    adds=(("tinytorch/generation/__init__.py", ""),),
    moves=((MEMO, "tinytorch/generation/kv_cache.py"),),
    deletes=("tinytorch/perf",),
)
RELEASE_2025 = "published 2025 package defect"


def release_2025(name: str, groups: str, description: str, *edits: object) -> Variant:
    return bug(name, groups, description + " (Laid out as the 2025 package: tinytorch/generation/kv_cache.py.)",
               *edits, origin=RELEASE_2025, **LAYOUT_2025)  # type: ignore[arg-type]


VARIANTS: list[Variant] = [
    # -- the course text's four common errors ------------------------------------------------
    bug(
        "full_cache_not_checked", "bounds",
        "update never checks seq_pos against max_seq_len: the write into the full cache fails inside "
        "NumPy (an empty slice) with a broadcasting message that names neither limit.",
        edit(MEMO, FULL_CHECK, ""),
        origin=COURSE,
    ),
    bug(
        "advance_does_nothing", "advance",
        "Forgetting to advance: advance() is a stub, so every token overwrites position 0.",
        edit(MEMO, "        self.seq_pos += 1\n", "        pass  # TODO: move to the next position\n"),
        origin=COURSE,
    ),
    bug(
        "update_advances", "update",
        "Advance in the wrong place: update moves seq_pos itself and advance() does nothing, which "
        "looks right for one layer and shifts every later layer by one position.",
        edit(MEMO, WRITES, WRITES + "        self.seq_pos += 1  # one more token stored\n"),
        edit(MEMO, "        self.seq_pos += 1\n", "        pass  # update already moved seq_pos\n"),
        origin=COURSE,
        collateral="advance attention memoization model non-invasive",
        collateral_why="advance does nothing (its half of the bug); every cached decode reads positions shifted by layer",
    ),
    bug(
        "shape_not_validated", "shapes",
        "Shape mismatch not validated: no shape check at all, so NumPy broadcasts a (1, H, 1, D) key "
        "into every batch element and a (B, H, 1, 1) one across head_dim.",
        edit(MEMO, KEY_CHECK + VALUE_CHECK, ""),
        origin=COURSE,
    ),
    bug(
        "reset_does_not_rewind", "reset model",
        "No reset between sequences: reset() clears the arrays but forgets seq_pos = 0, so the second "
        "prompt is appended to the first.",
        edit(MEMO, RESET_BODY, RESET_BODY.replace("        self.seq_pos = 0\n", "")),
        origin=COURSE,
        collateral="",
    ),
    bug(
        "reset_does_not_clear", "reset",
        "Stale data after reset: reset() only rewinds seq_pos, so positions the new sequence has not "
        "written still hold the previous sequence's keys and values.",
        edit(MEMO, RESET_BODY, "        self.seq_pos = 0\n"),
        origin=COURSE,
        collateral="",
    ),
    # -- the published release's defects -----------------------------------------------------
    release_2025(
        "closure_over_loop_variable", "model",
        "Every layer uses the last block's weights: the patched forward is a closure defined in the "
        "loop that reads `block` and `layer_idx` when it runs, after the loop has finished.",
        edit(
            MEMO, PATCH_LOOP,
            """    for layer_idx, block in enumerate(model.blocks):
        block._original_attention_forward = block.attention.forward

        def cached_forward(x, mask=None):
            forward = _make_cached_forward(layer_idx, block.attention, block._original_attention_forward, cache)
            return forward(x, mask)

        block.attention.forward = cached_forward
""",
        ),
    ),
    release_2025(
        "first_token_never_cached", "model",
        "The first token (seq_pos == 0) takes the original path and is never written, so every later "
        "token attends to a zero key at position 0.",
        edit(MEMO, "        if seq_len > 1:\n", "        if seq_len > 1 or cache.seq_pos == 0:\n"),
    ),
    release_2025(
        "current_token_not_attended", "model",
        "The new token is written to the cache but not attended to: each step attends over the cached "
        "prefix only (cache.get before this token), leaving out the token's own key and value; the first "
        "token, with nothing cached, attends to itself.",
        edit(MEMO, CONCAT, "        all_keys = past_keys.data if cache.seq_pos else K.data\n"
                           "        all_values = past_values.data if cache.seq_pos else V.data\n"),
    ),
    bug(
        "attends_only_to_itself", "model",
        "The attention-side analogue of the release's position-0 bug (our model owns positions, so a "
        "student cannot get the positional embedding wrong): each single-token step is computed as if "
        "the token were position 0 of a fresh sequence, attending to itself and ignoring the cached "
        "prefix (which it still writes).",
        edit(MEMO, CONCAT, "        all_keys = K.data\n        all_values = V.data\n"),
        origin=RELEASE,
    ),
    # -- off-by-one, wrong slot --------------------------------------------------------------
    bug(
        "get_includes_next_slot", "get",
        "Off-by-one in get: returns seq_pos + 1 positions (the slot being written, or a zero one).",
        edit(MEMO, "        valid_len = self.seq_pos\n", "        valid_len = self.seq_pos + 1\n"),
        collateral="attention memoization model non-invasive",
        collateral_why="attention over what get returns, and so every cached decode, sees one position too many",
    ),
    bug(
        "get_returns_whole_buffer", "get",
        "get returns the full (B, H, max_seq_len, D) buffer instead of the valid prefix.",
        edit(MEMO, GET_SLICES, "        cached_keys = key_cache.data\n        cached_values = value_cache.data\n"),
    ),
    bug(
        "update_writes_next_slot", "update",
        "Off-by-one in update: writes at seq_pos + 1.",
        edit(MEMO, "        pos = self.seq_pos\n", "        pos = self.seq_pos + 1\n"),
    ),
    bug(
        "wrong_layer_written", "update",
        "1-based layer thinking: update writes layer_idx - 1 (layer 0 lands in the last layer).",
        edit(
            MEMO, "        key_cache, value_cache = self.caches[layer_idx]\n        pos = self.seq_pos\n",
            "        key_cache, value_cache = self.caches[layer_idx - 1]\n        pos = self.seq_pos\n",
        ),
    ),
    bug(
        "only_first_batch_written", "update",
        "update writes batch element 0 only (indexing the batch axis with 0 instead of :).",
        edit(
            MEMO, WRITES,
            "        key_cache.data[0, :, pos, :] = key.data[0, :, 0, :]\n"
            "        value_cache.data[0, :, pos, :] = value.data[0, :, 0, :]\n",
        ),
    ),
    bug(
        "first_head_everywhere", "update",
        "update writes head 0 of the key and value into every head (key.data[:, :1] broadcasts).",
        edit(
            MEMO, WRITES,
            "        key_cache.data[:, :, pos : pos + 1, :] = key.data[:, :1]\n"
            "        value_cache.data[:, :, pos : pos + 1, :] = value.data[:, :1]\n",
        ),
    ),
    bug(
        "keys_values_swapped_in_update", "update",
        "K and V swapped: update stores the key in the value cache and the value in the key cache.",
        edit(
            MEMO, WRITES,
            "        key_cache.data[:, :, pos : pos + 1, :] = value.data\n"
            "        value_cache.data[:, :, pos : pos + 1, :] = key.data\n",
        ),
    ),
    bug(
        "get_returns_values_first", "get",
        "K and V swapped on the way out: get returns (values, keys).",
        edit(MEMO, "        return Tensor(cached_keys), Tensor(cached_values)\n",
             "        return Tensor(cached_values), Tensor(cached_keys)\n"),
    ),
    # -- shapes --------------------------------------------------------------------------------
    release_2025(
        "shape_checks_head_dim_only", "shapes",
        "Silent broadcasting: the shape check only compares the last axis, so a (1, H, 1, D) key for "
        "B = 2 or an (H, 1, D) key is broadcast into the cache.",
        edit(
            MEMO, KEY_CHECK + VALUE_CHECK,
            """        if key.shape[-1] != self.head_dim or value.shape[-1] != self.head_dim:
            raise ValueError(f"Expected head_dim {self.head_dim}, got {key.shape[-1]} and {value.shape[-1]}")
""",
        ),
    ),
    bug(
        "value_shape_not_checked", "shapes",
        "Only the key's shape is validated; a bad value is broadcast into the cache.",
        edit(MEMO, VALUE_CHECK, ""),
    ),
    bug(
        "value_checked_after_key_written", "shapes",
        "A rejected update half-writes: the value's shape is checked after the key was stored.",
        edit(MEMO, VALUE_CHECK, ""),
        edit(
            MEMO, "        key_cache.data[:, :, pos : pos + 1, :] = key.data\n",
            "        key_cache.data[:, :, pos : pos + 1, :] = key.data\n" + VALUE_CHECK,
        ),
    ),
    # -- bounds ----------------------------------------------------------------------------------
    release_2025(
        "negative_layer_accepted", "bounds",
        "A negative layer index is accepted; NumPy/list indexing maps -1 to the last layer.",
        edit(MEMO, """        if layer_idx < 0:
            raise ValueError(f"Layer index {layer_idx} must not be negative")
""", ""),
    ),
    bug(
        "layer_check_off_by_one", "bounds",
        "layer_idx > num_layers instead of >=: layer num_layers fails with an IndexError from the list.",
        edit(MEMO, "        if layer_idx >= self.num_layers:\n", "        if layer_idx > self.num_layers:\n"),
    ),
    release_2025(
        "advance_past_full", "bounds",
        "advance() has no limit, so seq_pos runs past max_seq_len (some releases do this).",
        edit(MEMO, """        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"Cannot advance: sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}")
""", ""),
    ),
    bug(
        "full_cache_message_without_numbers", "bounds",
        "The full-cache error says only 'KV cache is full': not which position, not which limit.",
        edit(MEMO, FULL_CHECK, FULL_CHECK.replace(
            'f"Sequence position {self.seq_pos} >= max_seq_len {self.max_seq_len}"', '"KV cache is full"')),
    ),
    # -- construction ----------------------------------------------------------------------------
    bug(
        "no_constructor_validation", "construction",
        "The constructor validates nothing: a zero dimension builds a cache that can hold nothing.",
        edit(MEMO, """            if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {dim!r}")
            if dim <= 0:
                raise ValueError(f"{name} must be positive, got {dim}")
""", "            pass  # trust the caller\n"),
    ),
    bug(
        "storage_shared_between_instances", "construction",
        "The per-layer storage list is a class attribute: every KVCache appends to, and reads, the same "
        "list, so a second cache reads the first one's layers.",
        edit(MEMO, '    """Pre-allocated key/value storage for every layer of a transformer."""\n',
             '    """Pre-allocated key/value storage for every layer of a transformer."""\n\n    caches = []\n'),
        edit(MEMO, "        self.caches = []\n", ""),
    ),
    # -- memory report ---------------------------------------------------------------------------
    bug(
        "memory_8_bytes_per_element", "memory",
        "get_memory_usage counts 8 bytes per element (a float64 habit) for float32 storage.",
        edit(MEMO, "        total_bytes = total_elements * BYTES_PER_FLOAT32\n", "        total_bytes = total_elements * 8\n"),
    ),
    bug(
        "memory_missing_kv_factor", "memory",
        "get_memory_usage forgets the factor 2 (keys and values): counts one tensor per layer.",
        edit(MEMO, "        total_elements = cache_tensors * elements_per_tensor\n",
             "        total_elements = self.num_layers * elements_per_tensor\n"),
    ),
    bug(
        "memory_mb_as_10_6", "memory",
        "MB computed as 10**6 bytes instead of 1024 * 1024.",
        edit(MEMO, "BYTES_PER_MB = 1024 * 1024\n", "BYTES_PER_MB = 1_000_000\n"),
    ),
    bug(
        "per_layer_mb_per_tensor", "memory",
        "per_layer_mb divides by the number of tensors (2L) instead of layers (L).",
        edit(MEMO, '            "per_layer_mb": total_mb / self.num_layers,\n', '            "per_layer_mb": total_mb / cache_tensors,\n'),
    ),
    bug(
        "memory_ignores_batch", "memory",
        "get_memory_usage leaves out batch_size: memory is reported as if B = 1.",
        edit(MEMO, "        elements_per_tensor = self.batch_size * self.num_heads * self.max_seq_len * self.head_dim\n",
             "        elements_per_tensor = self.num_heads * self.max_seq_len * self.head_dim\n"),
    ),
    bug(
        "memory_counts_tokens_so_far", "memory",
        "get_memory_usage counts the positions used so far (seq_pos) instead of the pre-allocated max_seq_len.",
        edit(MEMO, "        elements_per_tensor = self.batch_size * self.num_heads * self.max_seq_len * self.head_dim\n",
             "        elements_per_tensor = self.batch_size * self.num_heads * self.seq_pos * self.head_dim\n"),
    ),
    bug(
        "cache_tensors_per_layer", "memory",
        "cache_tensors reports L (one per layer) instead of 2L.",
        edit(MEMO, '            "cache_tensors": cache_tensors,\n', '            "cache_tensors": self.num_layers,\n'),
    ),
    bug(
        "float64_storage", "memory",
        "float64 storage reported as float32: the student's Tensor keeps the dtype it is given and the "
        "cache allocates np.zeros (float64 by default), holding twice what get_memory_usage reports.",
        edit(TENSOR, "        # Always store float32, and always copy: a Tensor owns its data.\n"
             "        self.data = np.array(data, dtype=np.float32)\n",
             "        # Keep whatever dtype we are given.\n        self.data = np.array(data)\n"),
    ),
    # -- cost ----------------------------------------------------------------------------------------
    bug(
        "update_reallocates_storage", "performance",
        "O(n) update by reallocation: each update rebuilds the layer's whole buffer with np.concatenate "
        "instead of writing one slot.",
        edit(
            MEMO, WRITES,
            "        key_cache.data = np.concatenate([key_cache.data[:, :, :pos], key.data, key_cache.data[:, :, pos + 1 :]], axis=2)\n"
            "        value_cache.data = np.concatenate([value_cache.data[:, :, :pos], value.data, value_cache.data[:, :, pos + 1 :]], axis=2)\n",
        ),
    ),
    bug(
        "grow_by_concatenation", "performance memory",
        "The cache grows as the sequence does: nothing is allocated up front and every update "
        "concatenates the history with the new token (O(n) per token, O(n^2) per sequence).",
        edit(MEMO, "            key_cache = Tensor(np.zeros(self.cache_shape))\n            value_cache = Tensor(np.zeros(self.cache_shape))\n",
             "            empty = (batch_size, num_heads, 0, head_dim)  # grows with the sequence\n"
             "            key_cache = Tensor(np.zeros(empty))\n            value_cache = Tensor(np.zeros(empty))\n"),
        edit(
            MEMO, WRITES,
            """        grow = pos + 1 - key_cache.data.shape[2]
        if grow > 0:  # make room for this position
            padding = np.zeros((self.batch_size, self.num_heads, grow, self.head_dim), dtype=np.float32)
            key_cache.data = np.concatenate([key_cache.data, padding], axis=2)
            value_cache.data = np.concatenate([value_cache.data, padding], axis=2)
""" + WRITES,
        ),
        edit(MEMO, GET_SLICES, """        missing = max(0, valid_len - key_cache.data.shape[2])
        padding = np.zeros((self.batch_size, self.num_heads, missing, self.head_dim), dtype=np.float32)
        cached_keys = np.concatenate([key_cache.data[:, :, :valid_len, :], padding], axis=2)
        cached_values = np.concatenate([value_cache.data[:, :, :valid_len, :], padding], axis=2)
"""),
    ),
    bug(
        "aliases_caller_arrays", "update",
        "The cache keeps the caller's arrays: update stores key.data and value.data in per-position "
        "lists (no copy) and get stacks them, so a caller reusing its buffers rewrites the history.",
        edit(MEMO, "            self.caches.append((key_cache, value_cache))\n",
             "            self.caches.append((key_cache, value_cache))\n"
             "        self.key_slots = [[None] * max_seq_len for _ in range(num_layers)]\n"
             "        self.value_slots = [[None] * max_seq_len for _ in range(num_layers)]\n"),
        edit(MEMO, WRITES, "        self.key_slots[layer_idx][pos] = key.data  # keep the token; stacked by get\n"
             "        self.value_slots[layer_idx][pos] = value.data\n"),
        edit(MEMO, GET_SLICES, """        slot_shape = (self.batch_size, self.num_heads, 1, self.head_dim)
        empty = [np.zeros((self.batch_size, self.num_heads, 0, self.head_dim), dtype=np.float32)]
        cached_keys = np.concatenate(empty + [k if k is not None else np.zeros(slot_shape, dtype=np.float32)
                                              for k in self.key_slots[layer_idx][:valid_len]], axis=2)
        cached_values = np.concatenate(empty + [v if v is not None else np.zeros(slot_shape, dtype=np.float32)
                                                for v in self.value_slots[layer_idx][:valid_len]], axis=2)
"""),
        edit(MEMO, RESET_BODY, RESET_BODY + """        for slots in self.key_slots + self.value_slots:
            slots[:] = [None] * self.max_seq_len
"""),
        collateral="",
    ),
    # -- memoization -------------------------------------------------------------------------------
    bug(
        "recomputes_keys_and_values", "memoization",
        "No memoization: outputs are right, but each step re-projects the keys and values of the whole "
        "sequence from the inputs it kept (the cache is written and never read).",
        edit(MEMO, FACTORY_HEAD, FACTORY_HEAD + "    inputs = []  # every token this layer has seen\n\n"),
        edit(
            MEMO, CONCAT,
            """        # Recompute keys and values for the whole sequence so far, to be safe.
        inputs.append(x.data)
        sequence = Tensor(np.concatenate(inputs[-(cache.seq_pos + 1):], axis=1))
        n = sequence.shape[1]
        all_keys = attention.k_proj.forward(sequence).reshape(batch_size, n, num_heads, head_dim).transpose(1, 2).data
        all_values = attention.v_proj.forward(sequence).reshape(batch_size, n, num_heads, head_dim).transpose(1, 2).data
""",
        ),
    ),
    bug(
        "recomputes_queries", "memoization",
        "Queries recomputed for the whole sequence at every step and the last row kept: correct "
        "outputs, quadratic query projections.",
        edit(MEMO, FACTORY_HEAD, FACTORY_HEAD + "    inputs = []  # every token this layer has seen\n\n"),
        edit(
            MEMO, Q_PROJ,
            """        inputs.append(x.data)
        sequence = Tensor(np.concatenate(inputs[-(cache.seq_pos + 1):], axis=1))
        n = sequence.shape[1]
        Q = attention.q_proj.forward(sequence).reshape(batch_size, n, num_heads, head_dim).transpose(1, 2)
        Q = Tensor(Q.data[:, :, -1:, :])  # the new token's query
""",
        ),
    ),
    # -- attention maths -------------------------------------------------------------------------
    bug(
        "scale_by_head_dim", "model",
        "Wrong attention scale: scores divided by head_dim instead of sqrt(head_dim).",
        edit(MEMO, "/ np.sqrt(head_dim)\n", "/ head_dim\n"),
    ),
    bug(
        "scale_by_embed_dim", "model",
        "Wrong attention scale: scores divided by sqrt(embed_dim) (the model width) instead of sqrt(head_dim).",
        edit(MEMO, "/ np.sqrt(head_dim)\n", "/ np.sqrt(embed_dim)\n"),
    ),
    bug(
        "softmax_without_max_subtraction", "model",
        "The cached path's softmax exponentiates raw scores: exp overflows to inf above 88 in float32, "
        "so a model with large attention scores (as trained models have) gets nan logits.",
        edit(MEMO, "    scores = scores - np.max(scores, axis=-1, keepdims=True)\n", ""),
    ),
    bug(
        "prompt_forward_fills_cache", "model",
        "The multi-token (prompt) path writes the prompt's keys and values into the cache storage "
        "(without advancing): the course design leaves the cache untouched there.",
        edit(
            MEMO, """            # A whole prompt at once: the original attention, the cache is not touched.
            return original_forward(x, mask)
""",
            """            # A whole prompt at once: remember its keys and values too.
            K_all = attention.k_proj.forward(x).reshape(batch_size, seq_len, attention.num_heads, attention.head_dim).transpose(1, 2)
            V_all = attention.v_proj.forward(x).reshape(batch_size, seq_len, attention.num_heads, attention.head_dim).transpose(1, 2)
            n = min(seq_len, cache.max_seq_len)
            cache.caches[layer_idx][0].data[:, :, :n, :] = K_all.data[:, :, :n, :]
            cache.caches[layer_idx][1].data[:, :, :n, :] = V_all.data[:, :, :n, :]
            return original_forward(x, mask)
""",
        ),
    ),
    # -- enable / disable ---------------------------------------------------------------------------
    bug(
        "enable_head_dim_is_embed_dim", "model",
        "enable_kv_cache sizes the cache with head_dim = embed_dim (forgets to divide by num_heads).",
        edit(MEMO, "    head_dim = model.embed_dim // model.num_heads\n", "    head_dim = model.embed_dim\n"),
    ),
    bug(
        "enable_no_divisibility_check", "model",
        "enable_kv_cache does not check embed_dim % num_heads; the cache gets a floored head_dim.",
        edit(MEMO, """    if model.embed_dim % model.num_heads != 0:
        raise ValueError(f"embed_dim {model.embed_dim} is not divisible by num_heads {model.num_heads}")
""", ""),
    ),
    bug(
        "enable_does_not_set_flag", "model",
        "enable_kv_cache never sets model._cache_enabled = True.",
        edit(MEMO, "    model._cache_enabled = True\n", ""),
    ),
    bug(
        "disable_does_not_restore", "non-invasive",
        "disable_kv_cache only clears the flags: the patched attention stays in place.",
        edit(MEMO, RESTORE, "        pass  # the flags below turn the cache off\n"),
    ),
    bug(
        "disable_leaves_flag_set", "non-invasive",
        "disable_kv_cache restores the attention but forgets to reset the flag: model._cache_enabled stays True, "
        "so generation code that reads it still takes the cached path.",
        edit(MEMO, "    model._cache_enabled = False\n", ""),
    ),
    bug(
        "double_patching", "non-invasive",
        "Enabling twice wraps the patch: the second enable saves the first patch as the 'original', "
        "so disable brings back the first (cached) patch.",
        edit(MEMO, """    if getattr(model, "_cache_enabled", False):
        disable_kv_cache(model)

""", ""),
    ),
    bug(
        "disable_crashes_when_never_enabled", "non-invasive",
        "disable_kv_cache assumes enable ran: AttributeError on a model that was never enabled.",
        edit(MEMO, """    for block in getattr(model, "blocks", []):
        if hasattr(block, "_original_attention_forward"):
            block.attention.forward = block._original_attention_forward
            del block._original_attention_forward
""", """    for block in model.blocks:
        block.attention.forward = block._original_attention_forward
        del block._original_attention_forward
"""),
    ),
    bug(
        "disable_needs_blocks", "non-invasive",
        "disable_kv_cache reads model.blocks before anything else: AttributeError on a model that "
        "enable_kv_cache refused for having no blocks, as cleanup in a finally meets it (KV-NI-3).",
        edit(MEMO, """    for block in getattr(model, "blocks", []):
        if hasattr(block, "_original_attention_forward"):""", """    for block in model.blocks:
        if hasattr(block, "_original_attention_forward"):"""),
    ),
    # -- vacuous passes and bugs the machines once missed (issue 11) ---------------------------
    bug(
        "hollow_cache", "update get reset bounds shapes attention model memoization performance",
        "A hollow cache: every argument is validated and seq_pos kept, but update stores nothing and get "
        "returns zero positions. It must earn nothing for any clause about stored content.",
        edit(MEMO, WRITES, "        # TODO: store key and value at pos\n"),
        edit(MEMO, "        valid_len = self.seq_pos\n", "        valid_len = 0  # TODO: the cached prefix\n"),
        collateral="construction advance non-invasive",
        collateral_why="KV-CON-4's twin comparison and KV-ADV-2 have nothing to compare (not measured); KV-NI-4 "
        "decodes with the cache",
    ),
    bug(
        "update_concatenates_and_advances", "update performance",
        "update rebuilds the layer's whole history with np.concatenate on every call (O(n) per token) and "
        "moves seq_pos itself, which once sent the performance check home early with full marks.",
        edit(MEMO, WRITES,
             "        key_cache.data = np.concatenate([key_cache.data[:, :, :pos, :], key.data, key_cache.data[:, :, pos + 1 :, :]], axis=2)\n"
             "        value_cache.data = np.concatenate([value_cache.data[:, :, :pos, :], value.data, value_cache.data[:, :, pos + 1 :, :]], axis=2)\n"
             "        self.seq_pos += 1  # one more token stored\n"),
        edit(MEMO, "        self.seq_pos += 1\n", "        pass  # update already moved seq_pos\n"),
        collateral="advance attention model non-invasive memoization",
        collateral_why="advance does nothing (its half of the bug); every decoding runs out of positions or "
        "reads them shifted",
    ),
    bug(
        "get_memo_survives_reset", "reset",
        "get hands out copies and keeps the last one per layer with the seq_pos it was taken at (an update "
        "drops it), but reset forgets it: update, advance, get, reset, advance, get shows the old sequence.",
        edit(MEMO, "        self.seq_pos = 0\n\n", "        self.seq_pos = 0\n        self._memo = {}  # layer -> (seq_pos, keys, values)\n\n"),
        edit(MEMO, WRITES, WRITES + "        self._memo.pop(layer_idx, None)  # this layer changed\n"),
        edit(MEMO, "        return Tensor(cached_keys), Tensor(cached_values)\n",
             "        memo = self._memo.get(layer_idx)\n"
             "        if memo is None or memo[0] != self.seq_pos:\n"
             "            memo = (self.seq_pos, cached_keys.copy(), cached_values.copy())\n"
             "            self._memo[layer_idx] = memo\n"
             "        return Tensor(memo[1]), Tensor(memo[2])\n"),
        collateral="",
    ),
    bug(
        "reset_clears_below_seq_pos", "reset",
        "reset clears only the positions below seq_pos, so a row written but not yet advanced past survives "
        "into the next sequence (update, then reset without an advance).",
        edit(MEMO, RESET_BODY, """        for key_cache, value_cache in self.caches:
            key_cache.data[:, :, : self.seq_pos, :] = 0.0
            value_cache.data[:, :, : self.seq_pos, :] = 0.0
        self.seq_pos = 0
"""),
        collateral="",
    ),
    bug(
        "full_check_one_early", "bounds",
        "The capacity check fires one position early (seq_pos >= max_seq_len - 1): the last position "
        "can never be written. Once cost 71 points across 13 groups, then 20 in four (the model-level checks "
        "failed their full-length decodes); it is one defect, bounds' (KV-BND-3), and costs only bounds' points.",
        edit(MEMO, "        if self.seq_pos >= self.max_seq_len:\n            raise ValueError(f\"Sequence position",
             "        if self.seq_pos >= self.max_seq_len - 1:\n            raise ValueError(f\"Sequence position"),
        collateral="",
    ),
]
