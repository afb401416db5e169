-- Embeddings in the row, not in TOAST. pgvector's `vector` type is stored EXTERNAL: once a row
-- passes ~2 KB — a 384-dimension vector is 1.5 KB, so a memory of a hundred-odd characters (its
-- content, lowercased key and tsvector) or a conversation turn of a few sentences — the vector
-- was moved out of line, and an exact search (every scope up to `recall_exact_search_max_scope`)
-- fetched each distance's vector from the TOAST table through its index: 4–5× the time of the
-- same scan with the vectors in the rows. MAIN keeps a vector in its row unless the row cannot
-- fit a page even with every other long value moved out. Rows written before this migration keep
-- their out-of-line vectors until they are written again (docs/operations.md).
ALTER TABLE memories ALTER COLUMN embedding SET STORAGE MAIN;
ALTER TABLE episodes ALTER COLUMN embedding SET STORAGE MAIN;
