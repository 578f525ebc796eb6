"""The model math: schedules, embedding, U-Net, EMA, DDIM, training and data. Imports nothing of ours."""
