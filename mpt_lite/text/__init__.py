"""Text: the tokenizer, chat templates, and incremental detokenization with stop strings."""
from __future__ import annotations

from .chat_template import CHATML_TEMPLATE, IM_END, IM_START, check_messages, render_chat, stop_settings
from .detok import TextDecoder, find_stop, held_back, text_pieces
from .tokenizer import MptTokenizer

__all__ = ["CHATML_TEMPLATE", "IM_END", "IM_START", "check_messages", "render_chat", "stop_settings",
           "TextDecoder", "find_stop", "held_back", "text_pieces", "MptTokenizer"]
