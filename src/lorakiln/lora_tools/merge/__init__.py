"""`lorakiln lora merge`: LoRAs into one LoRA (`loras`) or into a base checkpoint (`checkpoint`),
with the weighted-sum, TIES and DARE combinations (`task`); `merge` holds the torch-free parser.

Imports nothing, so the CLI parser can import `merge.merge` without torch.
"""
