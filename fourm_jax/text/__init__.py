"""Text vocabularies and the sequence formats 4M serialises structured modalities into."""
