"""Networks, heads, cell pooling and losses."""
