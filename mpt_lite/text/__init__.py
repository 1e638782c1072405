"""Text: the tokenizer, chat templates, and incremental detokenization with stop strings."""
from __future__ import annotations

from .chat_encode import encode_chat
from .chat_template import CHATML_TEMPLATE, IM_END, IM_START, check_messages, render_chat, stop_settings
from .checks import check_text
from .detok import TextDecoder, find_stop, held_back, text_pieces
from .tokenizer import MptTokenizer

__all__ = ["encode_chat", "check_text", "CHATML_TEMPLATE", "IM_END", "IM_START", "check_messages", "render_chat",
           "stop_settings", "TextDecoder", "find_stop", "held_back", "text_pieces", "MptTokenizer"]
