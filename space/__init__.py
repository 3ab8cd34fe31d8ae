"""The web demo (a Hugging Face Space folder); a package only so tests can import it."""
