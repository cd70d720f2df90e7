//! RoBERTa and XLM-RoBERTa as in transformers' `modeling_roberta.py` /
//! `modeling_xlm_roberta.py` (`XLMRobertaForSequenceClassification` is the same network).
//!
//! Differences from BERT: position ids count only non-padding tokens and start after the
//! padding index (`padding_idx + 1`), there are no meaningful token types (one row, always
//! 0), no pooler, and the head is dense → tanh → out_proj over the `<s>` token. The
//! encoder layers are BERT's (`bert::BertEncoder`), so adapter targets are the same.

use crate::models::dropout::Dropout;
use burn::nn::Linear;
use burn::prelude::*;

use super::bert::{BertEmbeddings, BertEncoder, BertLayer, LAYER_LINEARS, dense, trainable};
use super::config::ModelConfig;
use super::loader::Checkpoint;
use super::tensors::TensorSet;
use super::{LinearHook, LoadOptions, ModelInput, SequenceClassifier};
use crate::error::Result;

/// HF `RobertaModel` without pooler: embeddings with offset positions + BERT's encoder.
#[derive(Module, Debug)]
pub struct RobertaModel<B: Backend> {
    pub embeddings: BertEmbeddings<B>,
    pub encoder: BertEncoder<B>,
    pub padding_idx: usize,
}

impl<B: Backend> RobertaModel<B> {
    pub fn load(ck: &mut Checkpoint, cfg: &ModelConfig, device: &B::Device) -> Result<Self> {
        Ok(Self {
            embeddings: BertEmbeddings::load(ck, cfg, device)?,
            encoder: BertEncoder::load(ck, cfg, device)?,
            // Validated present for RoBERTa-style configs.
            padding_idx: cfg.pad_token_id.unwrap_or(1),
        })
    }

    /// Last hidden state `[batch, seq, hidden]`. Token type ids are ignored (all 0).
    pub fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        self.encoder
            .forward(self.embed(input), input.attention_mask.clone())
    }

    /// Last hidden state of the first (`<s>`) token, `[batch, 1, hidden]`.
    pub fn forward_first_token<H: LinearHook<B>>(
        &self,
        hook: &H,
        input: &ModelInput<B>,
    ) -> Tensor<B, 3> {
        self.encoder
            .forward_first_token(hook, self.embed(input), input.attention_mask.clone())
    }

    fn embed(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        let positions = position_ids(input.input_ids.clone(), self.padding_idx);
        self.embeddings
            .forward(input.input_ids.clone(), Some(positions), None)
    }
}

/// transformers' `create_position_ids_from_input_ids`: non-padding tokens are numbered
/// `padding_idx + 1, padding_idx + 2, …`; padding tokens get `padding_idx`.
pub fn position_ids<B: Backend>(
    input_ids: Tensor<B, 2, Int>,
    padding_idx: usize,
) -> Tensor<B, 2, Int> {
    let not_pad = input_ids.not_equal_elem(padding_idx as i64).int();
    not_pad
        .clone()
        .cumsum(1)
        .mul(not_pad)
        .add_scalar(padding_idx as i64)
}

/// HF `classifier` of `RobertaForSequenceClassification`.
#[derive(Module, Debug)]
pub struct RobertaClassificationHead<B: Backend> {
    pub dense: Linear<B>,
    pub out_proj: Linear<B>,
    pub dropout: Dropout,
}

impl<B: Backend> RobertaClassificationHead<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, _, h] = hidden.dims();
        let first = hidden.slice([0..b, 0..1]).reshape([b, h]);
        let x = dense(&self.dense, self.dropout.forward(first)).tanh();
        dense(&self.out_proj, self.dropout.forward(x))
    }
}

/// HF `RobertaForSequenceClassification` / `XLMRobertaForSequenceClassification`.
#[derive(Module, Debug)]
pub struct RobertaForSequenceClassification<B: Backend> {
    /// HF `roberta.*` (key prefix optional in the checkpoint).
    pub roberta: RobertaModel<B>,
    pub classifier: RobertaClassificationHead<B>,
}

impl<B: Backend> RobertaForSequenceClassification<B> {
    pub fn load(
        ck: &mut Checkpoint,
        cfg: &ModelConfig,
        opts: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let init = opts.init_missing_head.then_some(cfg.initializer_range);
        let roberta = RobertaModel::load(ck, cfg, device)?;
        let labels = opts.num_labels.unwrap_or(cfg.num_labels());
        let classifier = RobertaClassificationHead {
            dense: ck.head_linear("classifier.dense", h, h, init, device)?,
            out_proj: ck.head_linear("classifier.out_proj", h, labels, init, device)?,
            dropout: Dropout::new(cfg.classifier_dropout()),
        };
        Ok(Self {
            roberta,
            classifier,
        })
    }
}

impl<B: Backend> SequenceClassifier<B> for RobertaForSequenceClassification<B> {
    fn layer_linears(&self) -> &'static [&'static str] {
        &LAYER_LINEARS
    }

    fn layer_path(&self, i: usize) -> String {
        format!("roberta.encoder.layer.{i}")
    }

    fn num_layers(&self) -> usize {
        self.roberta.encoder.layer.len()
    }

    fn layer_linear(&self, layer: usize, slot: usize) -> &Linear<B> {
        self.roberta.encoder.layer[layer].linear(slot)
    }

    fn layer_linear_mut(&mut self, layer: usize, slot: usize) -> &mut Linear<B> {
        self.roberta.encoder.layer[layer].linear_mut(slot)
    }

    fn forward_with<H: LinearHook<B>>(&self, input: &ModelInput<B>, hook: &H) -> Tensor<B, 2> {
        self.classifier
            .forward(self.roberta.forward_first_token(hook, input))
    }

    fn encode(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        self.roberta.forward(input)
    }

    fn num_labels(&self) -> usize {
        self.classifier.out_proj.weight.dims()[1]
    }

    fn without_dropout(&mut self) {
        self.classifier.dropout.prob = 0.0;
        self.roberta.embeddings.dropout.prob = 0.0;
        self.roberta
            .encoder
            .layer
            .iter_mut()
            .for_each(BertLayer::without_dropout);
    }

    /// RoBERTa's head has its own dense layer (PEFT's `classifier` covers both), so
    /// `train_pooler` changes nothing here.
    fn freeze_except_head(self, _train_pooler: bool) -> Self {
        let mut m = self.no_grad();
        m.classifier.dense = trainable(m.classifier.dense);
        m.classifier.out_proj = trainable(m.classifier.out_proj);
        m
    }

    fn modules_to_save(&self, _train_pooler: bool) -> Vec<&'static str> {
        vec!["classifier"]
    }

    fn head_tensors(&self, _train_pooler: bool, set: &mut TensorSet, prefix: &str) {
        set.linear(&format!("{prefix}classifier.dense"), &self.classifier.dense);
        set.linear(
            &format!("{prefix}classifier.out_proj"),
            &self.classifier.out_proj,
        );
    }

    fn load_head(
        &mut self,
        _train_pooler: bool,
        set: &mut TensorSet,
        path: &std::path::Path,
        prefix: &str,
        device: &B::Device,
    ) -> Result<()> {
        let c = &mut self.classifier;
        set.take_linear(
            path,
            &format!("{prefix}classifier.dense"),
            &mut c.dense,
            true,
            device,
        )?;
        set.take_linear(
            path,
            &format!("{prefix}classifier.out_proj"),
            &mut c.out_proj,
            true,
            device,
        )
    }

    fn model_tensors(&self, set: &mut TensorSet) {
        self.roberta.embeddings.tensors("roberta", set);
        for (i, l) in self.roberta.encoder.layer.iter().enumerate() {
            l.tensors(&format!("roberta.encoder.layer.{i}"), set);
        }
        set.linear("classifier.dense", &self.classifier.dense);
        set.linear("classifier.out_proj", &self.classifier.out_proj);
    }
}
