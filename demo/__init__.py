"""Gradio demo page: talks to the search API over HTTP only."""
