"""The Textual stylesheet and the theme files."""
