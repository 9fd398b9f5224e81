"""Models quantsweep builds itself (the random tiny Llama, the trained organism) and model import."""
