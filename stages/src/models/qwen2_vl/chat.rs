//! Qwen2-VL-Instruct's chat template for one user turn with one image, as its
//! `chat_template` renders `[{"role": "user", "content": [{"type": "image"}, {"type": "text",
//! "text": …}]}]` with `add_generation_prompt`: the default system turn, the image as
//! `<|vision_start|><|image_pad|><|vision_end|>` (the processor then repeats the pad once per
//! merged patch), the text, and the opened assistant turn.

/// The system turn the template adds when the conversation has none.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// The prompt text for one image of `image_tokens` merged patches and the user's `text`.
pub fn user_prompt(text: &str, image_tokens: usize) -> String {
    format!(
        "<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|>{}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n",
        "<|image_pad|>".repeat(image_tokens)
    )
}
