"""Pure attention functions (no Flax): scores, masks, exact, blockwise and hard attention."""
