"""Operations on the database. They flush, never commit; the caller commits once."""
