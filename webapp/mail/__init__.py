"""Protocol adapters and message handling. No Flask here."""
